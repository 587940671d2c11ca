"""Settings of DISEF's synthetic image generation, and the two presets they come in.

``GenerationConfig`` holds every setting of one run (saved as ``generation_config.json`` next to the images);
``GenerationConfig.preset(name)`` fills it from ``PRESETS``:

- ``disef_paper``: the released DISEF pipeline (vturrisi/disef@501ec4b ``generation/``): LLaVA-1.5-7B captions
  ("Provide a detailed caption ... knowing it's a {class}.", temperature 0.2, up to 1024 tokens), the model the
  README command and the training-run names use (``--model_name realistic`` = SG161222/Realistic_Vision_V2.0),
  DPM-Solver++ with 20 steps started at step 5 (img2img strength 0.75, 15 denoising steps), guidance 8, the
  caption alone as prompt, init images padded to a square and resized to 512, a zero-shot open_clip ViT-H-14
  (LAION-2B) filter with a budget of 100 cycles of 8 images after which images are kept unfiltered, 64 images
  per class.
- ``notebook``: the seed notebook's Flowers102 choices: Stable Diffusion 2.1-base with the same sampler, prompt
  "A realistic photo of a {class}, a type of flower. {caption}", LLaVA-1.5-7B in 4-bit with "Describe this image
  focusing on the object, knowing it's a {class}, a type of flower." (temperature 0.7, 60 tokens), a zero-shot
  ViT-B/16 filter with a budget of 100 discarded images, 32 images per class; the notebook's bugs stay fixed
  (docs/methods/disef.md lists them with the flags that restore them).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from typing import Any

BUDGET_UNITS = ("cycles", "discards")
BUDGET_POLICIES = ("accept", "stop")
CHAT_FORMATS = ("template", "notebook")
CAPTION_LABELS = ("name", "index")
DISEF_CAPTION_QUERY = "Provide a detailed caption for the image focusing on the object"
DISEF_CAPTION_HINT = ", knowing it's a {}."
NOTEBOOK_CHAT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "concise, factual descriptions of images.###Human: <image>\n{}###Assistant:")  # the notebook's
LLAVA_MODEL = "llava-hf/llava-1.5-7b-hf"
REALISTIC_VISION = "SG161222/Realistic_Vision_V2.0"  # DISEF's --model_name realistic
SD21_BASE = "stabilityai/stable-diffusion-2-1-base"  # DISEF's --model_name stable_diffusion; the notebook's
VIT_H14_LAION = "open_clip:ViT-H-14:laion2b_s32b_b79k"  # = hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K


@dataclass
class GenerationConfig:
    """Every setting of one generation run; the defaults are the ``disef_paper`` preset (see the module docstring).

    The sampler is always DPM-Solver++ (diffusers' ``DPMSolverMultistepScheduler``); ``strength`` x
    ``num_inference_steps`` denoising steps run, from the noise level of step ``(1 - strength) x steps``.
    """

    images_per_class: int = 64  # kept images per class (notebook: 32)
    batch_size: int = 8  # images per generation cycle
    num_inference_steps: int = 20
    strength: float = 0.75  # int(20 x 0.75) = 15 denoising steps = DISEF's --steps 5
    guidance_scale: float = 8.0
    seed: int = 1
    cycle_budget: int = 100  # after this many cycles (or discards) the budget policy applies
    budget_unit: str = "cycles"  # cycles (DISEF) or discards (notebook)
    budget_policy: str = "accept"  # accept: keep unfiltered images (DISEF); stop: give up on the class
    init_size: int = 512  # side of the init images; 0 = native size (the notebook, literally)
    pad_to_square: bool = True  # pad on a black canvas before resizing (DISEF)
    # SD prompt with {caption} (and optionally {classname})
    prompt_template: str = "{caption}"
    caption_query: str = DISEF_CAPTION_QUERY
    caption_hint: str = DISEF_CAPTION_HINT  # "{}" = class name (or the integer label with caption_label index)
    caption_label: str = "name"  # name, or index (the notebook's integer label, literally)
    chat_format: str = "template"  # the checkpoint's chat template, or notebook ("###Human: ... ###Assistant:")
    caption_temperature: float = 0.2  # notebook: 0.7
    caption_max_new_tokens: int = 1024  # notebook: 60
    save_discarded: bool = False  # also write rejected images under _discarded/<class>/
    classes: list = field(default_factory=list)  # class indices to generate for; empty = all
    sd_model: str = REALISTIC_VISION  # Hugging Face id or folder of a Stable Diffusion img2img pipeline
    llava_model: str = LLAVA_MODEL
    quantize_4bit: bool = False  # LLaVA in 4-bit NF4 (CUDA + bitsandbytes; the notebook)
    # CLIP name/path/tiny name, "open_clip:<arch>:<pretrained>", or "none" (keep every image)
    filter_backbone: str = VIT_H14_LAION
    filter_template: str = ""  # zero-shot prompt of the filter; "" = the dataset's template

    def check(self) -> None:
        choices = {"budget_unit": BUDGET_UNITS, "budget_policy": BUDGET_POLICIES, "chat_format": CHAT_FORMATS,
                   "caption_label": CAPTION_LABELS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"generation {key}={getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        if int(self.num_inference_steps * self.strength) < 1:
            raise ValueError(f"steps {self.num_inference_steps} x strength {self.strength} gives no denoising step; "
                             "raise --steps or --strength")
        if self.images_per_class < 1 or self.batch_size < 1 or self.cycle_budget < 0:
            raise ValueError("generation needs images_per_class >= 1, batch_size >= 1 and cycle_budget >= 0")
        if "{caption}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} must contain {{caption}}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GenerationConfig":
        """The settings of preset ``name`` (``PRESETS``), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"generation preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise KeyError(f"GenerationConfig has no setting {unknown}; known: {sorted(known)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "disef_paper": {},  # the GenerationConfig defaults
    "notebook": dict(
        images_per_class=32, budget_unit="discards", cycle_budget=100,
        prompt_template="A realistic photo of a {classname}, a type of flower. {caption}",
        caption_query="Describe this image focusing on the object",
        caption_hint=", knowing it's a {}, a type of flower.",
        caption_temperature=0.7, caption_max_new_tokens=60, sd_model=SD21_BASE, quantize_4bit=True,
        filter_backbone="ViT-B/16"),
}


def class_folder(classname: str) -> str:
    """File-system-safe folder name of a class ("bird of paradise" -> "bird_of_paradise")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", classname.strip()).strip("_") or "class"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256("-".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:15], 16)
