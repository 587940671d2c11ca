"""The models of DISEF's generation: LLaVA-1.5 captioner, Stable Diffusion img2img, zero-shot CLIP filter.

Each is a small callable around a Hugging Face / open_clip / vlprompt model, so that the pipeline loop
(``pipeline.py``) can be run with stand-ins (``fakes.py``, the tests).  Models are loaded with
``trust_remote_code=False`` (``HUB_LOAD_KWARGS``): no code shipped with a checkpoint is ever run.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

import torch
from PIL import Image

from vlprompt.extras import require

from .config import NOTEBOOK_CHAT, GenerationConfig

GENERATION = "DISEF's caption and image generation"

logger = logging.getLogger(__name__)

HUB_LOAD_KWARGS = {"trust_remote_code": False}  # every from_pretrained call: never run a checkpoint's own code


class Captioner(Protocol):
    def __call__(self, images: Sequence[Image.Image], classnames: Sequence[str], labels: Sequence[int]) -> list[str]:
        ...


def caption_request(cfg: GenerationConfig, classname: str, label: int) -> str:
    """The user text: query + hint with the class name (or, as the notebook, the integer label; label 0, which
    the notebook reads as "no label", gets a full stop instead of the hint)."""
    if cfg.caption_label == "index":
        return cfg.caption_query + (cfg.caption_hint.format(label) if label else ".")
    return cfg.caption_query + cfg.caption_hint.format(classname)


class LlavaCaptioner:
    """LLaVA-1.5 (transformers ``LlavaForConditionalGeneration`` + its processor) writing one caption per image."""

    def __init__(self, model, processor, cfg: GenerationConfig, batch_size: int = 8) -> None:
        self.model, self.processor, self.cfg, self.batch_size = model, processor, cfg, batch_size
        self.processor.tokenizer.padding_side = "left"  # generation continues at the right end of every row

    def build_prompt(self, classname: str, label: int) -> str:
        request = caption_request(self.cfg, classname, label)
        if self.cfg.chat_format == "notebook":
            return NOTEBOOK_CHAT.format(request)
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], classnames: Sequence[str], labels: Sequence[int]) -> list[str]:
        captions = []
        device = self.model.device
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            prompts = [self.build_prompt(c, y) for c, y in zip(classnames[start:end], labels[start:end])]
            inputs = self.processor(images=list(images[start:end]), text=prompts, return_tensors="pt", padding=True)
            inputs = inputs.to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)  # fp16 model, fp32 processor output
            output = self.model.generate(**inputs, do_sample=True, temperature=self.cfg.caption_temperature,
                                         max_new_tokens=self.cfg.caption_max_new_tokens)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]  # (n, new): drop the prompt
            captions += [c.strip() for c in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        return captions


class TemplateCaptioner:
    """No captioning model: "a photo of a {class}." (DISEF's fallback without --use_llava)."""

    def __init__(self, template: str = "a photo of a {}.") -> None:
        self.template = template

    def __call__(self, images: Sequence[Image.Image], classnames: Sequence[str], labels: Sequence[int]) -> list[str]:
        return [self.template.format(c) for c in classnames]


class Img2ImgGenerator:
    """``StableDiffusionImg2ImgPipeline`` with its scheduler swapped for DPM-Solver++ (``dpmsolver++``)."""

    def __init__(self, pipe, cfg: GenerationConfig) -> None:
        DPMSolverMultistepScheduler = require("diffusers", "generation", GENERATION).DPMSolverMultistepScheduler

        if not isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                                     algorithm_type="dpmsolver++")
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.cfg = pipe, cfg

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 seeds: Sequence[int]) -> list[Image.Image]:
        same_size = len({im.size for im in images}) == 1
        groups = [list(range(len(images)))] if same_size else [[i] for i in range(len(images))]
        out: list[Image.Image] = [None] * len(images)  # type: ignore[list-item]
        device = self.pipe.device
        for group in groups:
            result = self.pipe(
                prompt=[prompts[i] for i in group], image=[images[i] for i in group], strength=self.cfg.strength,
                num_inference_steps=self.cfg.num_inference_steps, guidance_scale=self.cfg.guidance_scale,
                generator=[torch.Generator(device=device).manual_seed(seeds[i]) for i in group], output_type="pil")
            for i, image in zip(group, result.images):
                out[i] = image
        return out


class ZeroShotFilter:
    """Zero-shot classifier over all classes: ``predict(images) -> class indices`` (argmax of cosine)."""

    def __init__(self, encode_image: Callable, encode_text: Callable, preprocess: Callable, classnames: Sequence[str],
                 template: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        self.encode_image, self.preprocess = encode_image, preprocess
        self.device, self.batch_size = torch.device(device), batch_size
        with torch.no_grad():
            texts = [template.format(c.replace("_", " ")) for c in classnames]
            features = encode_text(texts).float()
            self.text_features = features / features.norm(dim=-1, keepdim=True)  # (n_cls, E)

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> list[int]:
        predictions = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            features = self.encode_image(batch.to(self.device)).float()
            features = features / features.norm(dim=-1, keepdim=True)  # (B, E)
            predictions += (features @ self.text_features.t()).argmax(dim=-1).tolist()
        return predictions


def load_clip_filter(backbone: str, classnames: Sequence[str], template: str, device: str = "cpu",
                     lora_path: str = "", trust_local_archive: bool = False) -> ZeroShotFilter:
    """A ``ZeroShotFilter`` from our CLIP (name, tiny name or file; optionally + a LoRA file) or open_clip.

    ``backbone="open_clip:<arch>:<pretrained>"`` uses open_clip (DISEF: ``open_clip:ViT-H-14:laion2b_s32b_b79k``).
    ``trust_local_archive``: as ``MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE`` (a local TorchScript CLIP archive).
    """
    if backbone.startswith("open_clip:"):
        import open_clip

        _, arch, pretrained = backbone.split(":", 2)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
        model.eval()
        return ZeroShotFilter(model.encode_image, lambda texts: model.encode_text(tokenizer(texts).to(device)),
                              preprocess, classnames, template, device)
    from vlprompt import clip
    from vlprompt.clip.lora import load_lora_into

    from ..common.clip_loading import resolve_backbone

    model, preprocess = clip.load(resolve_backbone(backbone), device=device, trust_local_archive=trust_local_archive)
    if lora_path:
        load_lora_into(model, lora_path)
        logger.info(f"Filter: {backbone} + LoRA {lora_path}")
    model.eval()
    return ZeroShotFilter(model.encode_image, lambda texts: model.encode_text(clip.tokenize(texts).to(device)),
                          preprocess, classnames, template, device)


def read_rgb(path: str) -> Image.Image:
    from dassl.utils import read_image

    return read_image(path)


def load_llava(model_id: str, device: str, quantize_4bit: bool = False):
    """LLaVA-1.5 (hf) model and processor; ``quantize_4bit``: NF4 + double quant, fp16 compute (needs CUDA)."""
    transformers = require("transformers", "generation", GENERATION)
    AutoProcessor, LlavaForConditionalGeneration = transformers.AutoProcessor, transformers.LlavaForConditionalGeneration

    kwargs: dict = {"dtype": torch.float16 if device != "cpu" else torch.float32}
    if quantize_4bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float16,
                                                           bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}  # cuda:k: this shard's GPU only
    model = LlavaForConditionalGeneration.from_pretrained(model_id, **kwargs, **HUB_LOAD_KWARGS)
    if not quantize_4bit:  # a bitsandbytes model refuses .to()
        model.to(device)
    return model.eval(), AutoProcessor.from_pretrained(model_id, **HUB_LOAD_KWARGS)


def load_sd_img2img(model_id: str, device: str):
    """Stable Diffusion img2img (fp16 on GPU, fp32 on CPU) without the safety checker."""
    StableDiffusionImg2ImgPipeline = require("diffusers", "generation", GENERATION).StableDiffusionImg2ImgPipeline

    dtype = torch.float16 if device != "cpu" else torch.float32
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_id, torch_dtype=dtype, safety_checker=None,
                                                          requires_safety_checker=False, **HUB_LOAD_KWARGS)
    return pipe.to(device)

