"""DISEF's synthetic augmentation pipeline: caption real shots, img2img them with Stable Diffusion, filter with CLIP.

da Costa et al., "Diversified in-domain synthesis with efficient fine-tuning for few-shot classification",
arXiv:2312.03046; reference vturrisi/disef@501ec4b ``generation/synthetic_augmentation_pipeline.py``.
Spec: ``shared/specs/clip_lora_disef.md`` §2.1-§2.3, §3.3-§3.4, §4.1-§4.4.  Command line:
``scripts/disef/generate.py`` (= ``python -m vlprompt.trainers.common.disef_generation``).

Per class, one *cycle* generates ``batch_size`` images until ``images_per_class`` are kept:
1. ``batch_size`` real shots of the class are drawn with replacement (init images);
2. their LLaVA-1.5 captions (query with the class name, cached per real image) are randomly permuted, so each
   init image is paired with the caption of (usually) another real image;
3. Stable Diffusion img2img with DPM-Solver++: ``num_inference_steps`` 20 at strength 0.75 (15 denoising
   steps, DISEF's ``--steps 5``), guidance 8, prompt = caption; init images padded to a square on black and
   resized to 512;
4. a zero-shot CLIP (or a trained CLIP-LoRA) must predict the target class, until the class has used
   ``cycle_budget`` cycles; after that images are kept unfiltered (DISEF's rule), or the class stops
   (``budget_policy="stop"``).
Every kept image is ``<output>/<class_folder>/<class_folder>_<cycle>_<slot>.jpg``; ``manifest.jsonl`` has one
record per generated image (class, prompt, caption, caption source, init image, seed, kept/discarded, reason,
prediction).  Randomness is derived from (seed, class, cycle, slot), so a re-run continues exactly where a killed
run stopped and never regenerates kept images.

Sharding (several GPUs, nodes or Slurm array tasks writing into one output folder): shard ``I`` of ``N`` generates
exactly the classes ``c`` with ``c % N == I``; a class is never split, so its images, records and budget are those
of a single-process run.  ``--shard-index I --num-shards N``, or, without these flags, torchrun's
``RANK``/``WORLD_SIZE``, Slurm's ``SLURM_PROCID``/``SLURM_NTASKS`` (srun tasks) and/or
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` (array tasks; combined with the task rank when both have
more than one)::

    torchrun --nproc-per-node 8 scripts/disef/generate.py ... --output-dir OUT --device cuda  # GPU = LOCAL_RANK
    sbatch --array=0-15 --gpus=1 --wrap "python scripts/disef/generate.py ... --output-dir OUT"
    python scripts/disef/generate.py --merge --output-dir OUT   # only if no shard could merge (see below)

Shard ``I`` keeps its own ``manifest.shard-I-of-N.jsonl`` and ``captions.shard-I-of-N.json`` (same atomic
appends/rewrites and same resume as ``manifest.jsonl``; its orphan cleanup touches only its own class folders) and
writes ``manifest.shard-I-of-N.done.json`` (its classes and the manifest's SHA-256) when it finishes.  The shard that
finds every shard finished (so shard 0 when it finishes last) merges the shard manifests into ``manifest.jsonl`` in
class order, byte-identical to a single-process run; ``--merge`` does the same by hand, and a plain run merges any
finished but unmerged shards before it starts.  Merging is idempotent and refuses, in one line naming the shard, when
a shard is missing or unfinished, two shards claim one class, or ``manifest.jsonl`` holds records no shard has.
A shard whose manifest is missing (or behind) starts from ``manifest.jsonl``'s records of its classes, so a plain
run can be continued sharded and the shard count changed after a merge.  With one shard (the default) the files and
the code path are those of the unsharded generator.

Fixed on purpose (seed notebook, §3.7), each with its literal switch: the class *name* goes into the caption
query (§3.7.3; ``caption_label="index"`` passes the integer label and gives label 0 no hint); the hf checkpoint's
own chat template (§3.7.4; ``chat_format="notebook"`` uses "###Human: ... ###Assistant:"); the budget is an
explicit, logged policy checked after the filter (§3.7.6; ``budget_unit="discards"`` counts discards as the
notebook); init images padded and resized to 512 as DISEF (§3.7.12; ``init_size=0`` keeps the native size).
Also fixed, no switch needed: real images indexed by class once (§3.7.5), unique file names and a manifest
instead of overwritten discard folders (§3.7.7), ``pixel_values`` cast to the captioner's dtype (§3.7.11), the
diffusion schedule reset for every batch by the pipeline (§2.1, §2.8).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import os.path as osp
import random
import re
import socket
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Collection, Iterable, Mapping, Optional, Protocol, Sequence

import torch
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.jsonl"
CAPTIONS_FILE = "captions.json"
CONFIG_FILE = "generation_config.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 95
GENERATED_NAME = re.compile(r"^.+_\d{5}_\d{2}\.jpg$")  # <class_folder>_<cycle>_<slot>.jpg: files we may delete
DISEF_CAPTION_QUERY = "Provide a detailed caption for the image focusing on the object"  # §2.1.4
DISEF_CAPTION_HINT = ", knowing it's a {}."
NOTEBOOK_CHAT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "concise, factual descriptions of images.###Human: <image>\n{}###Assistant:")  # §3.3, literal
BUDGET_UNITS = ("cycles", "discards")
BUDGET_POLICIES = ("accept", "stop")
CHAT_FORMATS = ("template", "notebook")
CAPTION_LABELS = ("name", "index")
DEFAULT_SD_MODEL = "stabilityai/stable-diffusion-2-1-base"  # the notebook's; DISEF's README uses Realistic Vision
DEFAULT_LLAVA_MODEL = "llava-hf/llava-1.5-7b-hf"
SHARD_MANIFEST_FILE = "manifest.shard-{index}-of-{count}.jsonl"  # one per shard; merged into MANIFEST_FILE
SHARD_CAPTIONS_FILE = "captions.shard-{index}-of-{count}.json"
SHARD_DONE_FILE = "manifest.shard-{index}-of-{count}.done.json"  # written when the shard has finished
SHARD_FILE_NAME = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.(jsonl|done\.json)$")
# (index, count) variables of one process among several, in precedence order: torchrun, then srun tasks
PROCESS_RANK_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
ARRAY_RANK_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")  # Slurm job array (--array=0-15)
LOCAL_RANK_ENV = ("LOCAL_RANK", "SLURM_LOCALID")  # the process's index on its node: picks its GPU
USER_ERRORS = (FileNotFoundError, KeyError, ValueError)  # bad input: one line on stderr, exit status 1


@dataclass
class GenerationConfig:
    """Settings of one generation run (saved next to the manifest); defaults are DISEF's (§2.1-§2.3)."""

    images_per_class: int = 64  # kept images per class (notebook: 32)
    batch_size: int = 8  # images per generation cycle
    num_inference_steps: int = 20
    strength: float = 0.75  # int(20 x 0.75) = 15 denoising steps = DISEF's --steps 5
    guidance_scale: float = 8.0
    seed: int = 1
    cycle_budget: int = 100  # after this many cycles (or discards) the budget policy applies
    budget_unit: str = "cycles"  # cycles (DISEF) or discards (notebook, §3.7.6)
    budget_policy: str = "accept"  # accept: keep unfiltered images (DISEF); stop: give up on the class
    init_size: int = 512  # side of the init images; 0 = native size (notebook, §3.7.12)
    pad_to_square: bool = True  # pad on a black canvas before resizing (DISEF)
    # SD prompt with {caption} (and optionally {classname}); notebook: "A realistic photo of a {classname}, a type
    # of flower. {caption}"
    prompt_template: str = "{caption}"
    caption_query: str = DISEF_CAPTION_QUERY
    caption_hint: str = DISEF_CAPTION_HINT  # "{}" = class name (or the integer label with caption_label index)
    caption_label: str = "name"  # name, or index (notebook bug §3.7.3, literal)
    chat_format: str = "template"  # the checkpoint's chat template, or notebook (§3.7.4, literal)
    caption_temperature: float = 0.2  # notebook: 0.7
    caption_max_new_tokens: int = 1024  # notebook: 60
    save_discarded: bool = False  # also write rejected images under _discarded/<class>/
    classes: list = field(default_factory=list)  # class indices to generate for; empty = all

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


def class_folder(classname: str) -> str:
    """File-system-safe folder name of a class ("bird of paradise" -> "bird_of_paradise")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", classname.strip()).strip("_") or "class"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256("-".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:15], 16)


def prepare_init_image(image: Image.Image, size: int, pad_to_square: bool = True) -> Image.Image:
    """Centre ``image`` on a black square canvas and resize it to ``size`` x ``size`` (size 0: unchanged)."""
    image = image.convert("RGB")
    if pad_to_square and image.width != image.height:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    if size > 0:
        image = image.resize((size, size), Image.BICUBIC)
    return image


# ----------------------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the classes ``c`` with ``c % count == index`` (a class is never split)."""

    index: int = 0
    count: int = 1  # 1 = unsharded: manifest.jsonl and captions.json, as without sharding

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} of {self.count} shards; need --num-shards >= 1 and "
                             "0 <= --shard-index < --num-shards")

    def __str__(self) -> str:
        return f"shard {self.index}-of-{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def select(self, classes: Iterable[int]) -> list[int]:
        """The classes of ``classes`` (in their order) that this shard generates."""
        return [c for c in classes if c % self.count == self.index]

    def _file(self, template: str, unsharded: str) -> str:
        return template.format(index=self.index, count=self.count) if self.sharded else unsharded

    @property
    def manifest_file(self) -> str:
        return self._file(SHARD_MANIFEST_FILE, MANIFEST_FILE)

    @property
    def captions_file(self) -> str:
        return self._file(SHARD_CAPTIONS_FILE, CAPTIONS_FILE)

    @property
    def done_file(self) -> str:
        return SHARD_DONE_FILE.format(index=self.index, count=self.count)


def _env_rank(env: Mapping[str, str], index_key: str, count_key: str) -> Optional[tuple[int, int]]:
    """(index, count) from two environment variables, or None when unset or the count is 1."""
    if index_key not in env or count_key not in env:
        return None
    try:
        index, count = int(env[index_key]), int(env[count_key])
    except ValueError as err:
        raise ValueError(f"{index_key}={env[index_key]!r} / {count_key}={env[count_key]!r} are not integers; "
                         "pass --shard-index and --num-shards") from err
    return (index, count) if count > 1 else None


def _array_rank(env: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(index, count) of a Slurm array task; task ids are counted from SLURM_ARRAY_TASK_MIN in steps of _STEP."""
    rank = _env_rank(env, *ARRAY_RANK_ENV)
    if rank is None:
        return None
    first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    index, count = (rank[0] - first) // step, rank[1]
    if not 0 <= index < count:
        raise ValueError(f"SLURM_ARRAY_TASK_ID={rank[0]} is not one of {count} evenly spaced array tasks from "
                         f"{first}; submit with --array=0-{count - 1} or pass --shard-index and --num-shards")
    return index, count


def shard_from_env(env: Optional[Mapping[str, str]] = None) -> Shard:
    """The shard of this process from torchrun / srun / Slurm array variables (``Shard()`` when there are none).

    The process rank comes from ``RANK``/``WORLD_SIZE`` (torchrun), else ``SLURM_PROCID``/``SLURM_NTASKS``; an array
    task's rank from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``.  With both (several srun tasks in each
    array task), shard = array rank x tasks + task rank of array count x tasks.  A count of 1 means "not set".
    """
    env = os.environ if env is None else env
    process = next((r for keys in PROCESS_RANK_ENV if (r := _env_rank(env, *keys))), None)
    array = _array_rank(env)
    if process and array:
        return Shard(array[0] * process[1] + process[0], array[1] * process[1])
    rank = process or array
    return Shard(*rank) if rank else Shard()


def resolve_shard(index: Optional[int], count: Optional[int], env: Optional[Mapping[str, str]] = None) -> Shard:
    """``--shard-index``/``--num-shards`` when given (both), else ``shard_from_env``."""
    if index is None and count is None:
        return shard_from_env(env)
    if index is None or count is None:
        raise ValueError("--shard-index and --num-shards go together: pass both, or neither to read RANK/WORLD_SIZE, "
                         "SLURM_PROCID/SLURM_NTASKS or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    return Shard(index, count)


def shard_device(device: str, env: Optional[Mapping[str, str]] = None, device_count: Optional[int] = None) -> str:
    """``cuda`` -> ``cuda:<LOCAL_RANK or SLURM_LOCALID>`` when several GPUs are visible, so local shards don't share
    one GPU; any other device string is returned unchanged."""
    env = os.environ if env is None else env
    count = torch.cuda.device_count() if device_count is None else device_count
    local = next((env[k] for k in LOCAL_RANK_ENV if k in env), None)
    if device != "cuda" or count < 2 or local is None:
        return device
    return f"cuda:{int(local) % count}"


# ----------------------------------------------------------------------------------------------- captioners
class Captioner(Protocol):
    def __call__(self, images: Sequence[Image.Image], classnames: Sequence[str], labels: Sequence[int]) -> list[str]:
        ...


def caption_request(cfg: GenerationConfig, classname: str, label: int) -> str:
    """The user text: query + hint with the class name (or, literally, the integer label; label 0 gets none)."""
    if cfg.caption_label == "index":
        return cfg.caption_query + (cfg.caption_hint.format(label) if label else "")
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


# ------------------------------------------------------------------------------------------------ generator
class Img2ImgGenerator:
    """``StableDiffusionImg2ImgPipeline`` with its scheduler swapped for DPM-Solver++ (§4.1)."""

    def __init__(self, pipe, cfg: GenerationConfig) -> None:
        from diffusers import DPMSolverMultistepScheduler

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


# ------------------------------------------------------------------------------------------------ filter
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
                     lora_path: str = "") -> ZeroShotFilter:
    """A ``ZeroShotFilter`` from our CLIP (name, tiny name or file; optionally + a LoRA file) or open_clip.

    ``backbone="open_clip:<arch>:<pretrained>"`` uses open_clip (DISEF: ``open_clip:ViT-H-14:laion2b_s32b_b79k``).
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

    from .clip_loading import resolve_backbone

    model, preprocess = clip.load(resolve_backbone(backbone), device=device)
    if lora_path:
        load_lora_into(model, lora_path)
        logger.info(f"Filter: {backbone} + LoRA {lora_path}")
    model.eval()
    return ZeroShotFilter(model.encode_image, lambda texts: model.encode_text(clip.tokenize(texts).to(device)),
                          preprocess, classnames, template, device)


def low_f1_classes(labels: Sequence[int], predictions: Sequence[int], num_classes: int,
                   threshold: float = 0.70) -> list[int]:
    """Classes whose F1 (sklearn, ``zero_division=0``) is below ``threshold``: improved DISEF's selection (§3.4)."""
    from sklearn.metrics import precision_recall_fscore_support

    _, _, f1, _ = precision_recall_fscore_support(list(labels), list(predictions), labels=list(range(num_classes)),
                                                  zero_division=0)
    return [c for c in range(num_classes) if f1[c] < threshold]


# ------------------------------------------------------------------------------------------------ manifest
def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{socket.gethostname()}-{os.getpid()}"  # unique when shards on several nodes write one file
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


class Manifest:
    """``manifest.jsonl`` under ``root``: one JSON record per generated image, appended one cycle at a time.

    A shard's manifest (``name``) owns only its classes' ``folders``: files elsewhere are never removed by it.
    """

    def __init__(self, root: str, name: str = MANIFEST_FILE, folders: Optional[Collection[str]] = None) -> None:
        self.root, self.name = root, name
        self.path = osp.join(root, name)
        self.folders = None if folders is None else set(folders)  # None: every folder under root
        self.records: list[dict] = []

    def owns(self, relative: str) -> bool:
        """Whether ``relative`` (``<folder>/<file>`` or ``_discarded/<folder>/<file>``) is in one of our folders."""
        if self.folders is None:
            return True
        parts = osp.normpath(relative).split(os.sep)
        folder = parts[1] if parts[0] == "_discarded" and len(parts) > 2 else parts[0]
        return folder in self.folders

    def load(self) -> "Manifest":
        """Read the records and make them agree with the disk (a killed run may leave either side ahead)."""
        self.records = read_manifest(self.root, self.name)
        kept = [r for r in self.records if r["kept"]]
        missing = [r for r in kept if not osp.isfile(osp.join(self.root, r["file"]))]
        if missing:
            logger.warning(f"{len(missing)} kept images listed in {self.path} are missing on disk; "
                           "dropping their records (they will be generated again)")
            dropped = {id(r) for r in missing}
            self.records = [r for r in self.records if id(r) not in dropped]
        self._rewrite()
        listed = {osp.normpath(r["file"]) for r in self.records if r.get("file")}
        for path in image_files(self.root):
            relative = osp.normpath(osp.relpath(path, self.root))
            name = osp.basename(path)
            ours = GENERATED_NAME.match(name) or GENERATED_NAME.match(name.split(".tmp")[0])
            # written by a cycle that was killed before its records (never another shard's folder)
            if ours and relative not in listed and self.owns(relative):
                logger.warning(f"Removing {path}: not in the manifest (an interrupted cycle; it is regenerated)")
                os.remove(path)
        return self

    def _rewrite(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        _atomic_write(self.path, _jsonl(self.records))

    def append(self, records: Sequence[dict]) -> None:
        """Append all records of one cycle in a single write (after their images are on disk)."""
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records += list(records)

    def class_state(self, label: int) -> tuple[int, int, int]:
        """(kept images, cycles done, discarded images) of class ``label``."""
        rows = [r for r in self.records if r["class"] == label]
        kept = sum(r["kept"] for r in rows)
        cycles = 1 + max((r["cycle"] for r in rows), default=-1)
        return kept, cycles, len(rows) - kept


def read_manifest(root: str, name: str = MANIFEST_FILE) -> list[dict]:
    """Records of ``<root>/manifest.jsonl`` (or of the shard manifest ``name``); a truncated last line (killed
    mid-write) is ignored."""
    path = osp.join(root, name)
    if not osp.isfile(path):
        return []
    records = []
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines) - 1:
                raise ValueError(f"{path}:{number} is not valid JSON ({err}); fix or delete the line") from err
            logger.warning(f"{path}: ignoring a truncated last line")
    return records


def image_files(root: str, partial: bool = True) -> list[str]:
    """Every image file under ``root`` (class folders and ``_discarded``), with half-written ``.tmp`` ones."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        found += [osp.join(dirpath, n) for n in filenames
                  if n.lower().endswith(IMAGE_EXTENSIONS) or (partial and ".jpg.tmp" in n)]
    return sorted(found)


def kept_images(root: str) -> dict[str, list[str]]:
    """Class name -> kept image paths, in generation order (manifest), or class folders when there is none."""
    if not osp.isdir(root):
        raise FileNotFoundError(f"synthetic image folder {root} not found; run scripts/disef/generate.py first "
                                "or fix TRAINER.DISEF.SYN_DIR")
    pending = unmerged_shard_counts(root)
    if pending:
        raise FileNotFoundError(f"{root}: the manifests of a {pending[0]}-shard generation are not merged into "
                                f"{MANIFEST_FILE}; finish every shard or run scripts/disef/generate.py --merge "
                                f"--output-dir {root}")
    by_class: dict[str, list[str]] = defaultdict(list)
    records = read_manifest(root)
    if records:
        for r in records:
            if r["kept"]:
                by_class[r["classname"]].append(osp.join(root, r["file"]))
        return dict(by_class)
    for name in sorted(os.listdir(root)):  # DISEF's layout: <root>/<class>/*.jpg
        folder = osp.join(root, name)
        if osp.isdir(folder) and not name.startswith(("_", ".")):
            by_class[name] = sorted(osp.join(folder, n) for n in os.listdir(folder)
                                    if n.lower().endswith(IMAGE_EXTENSIONS))
    return dict(by_class)


# ------------------------------------------------------------------------------------------------ shard manifests
class ShardMergeError(ValueError):
    """Shard manifests that cannot be merged into ``manifest.jsonl`` (missing, unfinished or overlapping shards)."""


def _read_json(path: str, default):
    if not osp.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def shard_counts(root: str) -> list[int]:
    """The shard counts N named by the shard manifests and done markers under ``root``."""
    names = os.listdir(root) if osp.isdir(root) else []
    return sorted({int(m.group(2)) for n in names if (m := SHARD_FILE_NAME.match(n))})


def _shard_problem(root: str, shard: Shard) -> Optional[str]:
    """Why ``shard`` cannot be merged (None: it has finished and its manifest has not changed since)."""
    manifest = osp.join(root, shard.manifest_file)
    if not osp.isfile(manifest):
        return (f"{shard} is missing (no {shard.manifest_file}; run it with --shard-index {shard.index} "
                f"--num-shards {shard.count})")
    done = _read_json(osp.join(root, shard.done_file), None)
    if done is None:
        return f"{shard} is incomplete (no {shard.done_file}: still running or killed; re-run it)"
    if done.get("manifest_sha256") != _sha256(manifest):
        return f"{shard} is incomplete ({shard.manifest_file} changed after it finished: still running? re-run it)"
    return None


def unfinished_shards(root: str, count: int) -> list[str]:
    """One line per shard of ``count`` that has not finished (empty: all have)."""
    return [problem for i in range(count) if (problem := _shard_problem(root, Shard(i, count)))]


def unmerged_shard_counts(root: str, skip: int = 0) -> list[int]:
    """Shard counts (but ``skip``) whose shard manifests hold records that ``manifest.jsonl`` lacks."""
    merged = {json.dumps(r) for r in read_manifest(root)}
    pending = []
    for count in shard_counts(root):
        records = (r for i in range(count) for r in read_manifest(root, Shard(i, count).manifest_file))
        if count != skip and any(json.dumps(r) not in merged for r in records):
            pending.append(count)
    return pending


def _only_shard_count(root: str) -> int:
    counts = shard_counts(root)
    if not counts:
        raise ShardMergeError(f"cannot merge {root}: no shard manifest (manifest.shard-<I>-of-<N>.jsonl) there; "
                              "run the shards first or fix --output-dir")
    if len(counts) > 1:
        raise ShardMergeError(f"cannot merge {root}: it holds manifests of {' and '.join(map(str, counts))}-shard "
                              "runs; pass --num-shards")
    return counts[0]


def _claimed_records(root: str, count: int) -> list[dict]:
    """Every shard's records, after checking that no class is claimed (listed or generated) by two shards."""
    owner: dict[int, Shard] = {}
    records: list[dict] = []
    for i in range(count):
        shard = Shard(i, count)
        shard_records = read_manifest(root, shard.manifest_file)
        listed = _read_json(osp.join(root, shard.done_file), {}).get("classes", [])
        for label in sorted(set(listed) | {r["class"] for r in shard_records}):
            if label in owner:
                raise ShardMergeError(f"cannot merge {root}: class {label} is claimed by {owner[label]} and {shard} "
                                      "(files of different runs?); delete the wrong shard's files and re-run it")
            owner[label] = shard
        records += shard_records
    return records


def _merge_captions(root: str, count: int) -> None:
    """Add the shards' caption caches to ``captions.json`` (so a later plain run reuses them)."""
    path = osp.join(root, CAPTIONS_FILE)
    captions = _read_json(path, {})
    merged = dict(captions)
    for i in range(count):
        for image, caption in _read_json(osp.join(root, Shard(i, count).captions_file), {}).items():
            merged.setdefault(image, caption)
    if merged != captions:
        _atomic_write(path, json.dumps(merged, indent=0).encode())


def merge_shard_manifests(root: str, count: Optional[int] = None) -> str:
    """Merge the manifests of shards ``0..count-1`` into ``manifest.jsonl`` in class order; returns its path.

    Idempotent (an up-to-date ``manifest.jsonl`` is not rewritten).  ``count`` None: the one shard count found under
    ``root``.  Raises ``ShardMergeError`` when a shard is missing or unfinished, two shards claim one class, or
    ``manifest.jsonl`` holds records that no shard manifest has (merging would drop them).
    """
    count = count or _only_shard_count(root)
    if count < 2:
        raise ShardMergeError(f"cannot merge {root} with --num-shards {count}: an unsharded run writes "
                              f"{MANIFEST_FILE} itself; pass the shard count of the sharded run")
    problems = unfinished_shards(root, count)
    if problems:
        raise ShardMergeError(f"cannot merge {root}: {'; '.join(problems)}")
    records = sorted(_claimed_records(root, count), key=lambda r: r["class"])  # stable: generation order per class
    data = _jsonl(records)
    lines = set(data.decode().splitlines())
    lost = [r for r in read_manifest(root) if json.dumps(r) not in lines]
    if lost:
        raise ShardMergeError(f"cannot merge {root}: {MANIFEST_FILE} has {len(lost)} records no shard manifest holds "
                              f"(first: class {lost[0]['class']} cycle {lost[0]['cycle']}); move it away to rebuild "
                              "it from the shards")
    path = osp.join(root, MANIFEST_FILE)
    if osp.isfile(path) and _sha256(path) == hashlib.sha256(data).hexdigest():
        logger.info(f"{path} is already the merge of the {count} shard manifests")
    else:
        _atomic_write(path, data)
        logger.info(f"Merged {count} shard manifests into {path}: {len(records)} records of "
                    f"{len({r['class'] for r in records})} classes")
    _merge_captions(root, count)
    return path


def finish_shard(root: str, shard: Shard, classes: Sequence[int]) -> bool:
    """Mark ``shard`` finished (its classes and manifest hash); merge when every shard has; True if merged here.

    A failed automatic merge is logged, not raised: this shard's images are done; ``--merge`` reports it again.
    """
    manifest = osp.join(root, shard.manifest_file)
    if not osp.isfile(manifest):  # a shard without classes
        _atomic_write(manifest, b"")
    kept: dict[int, int] = defaultdict(int)
    for record in read_manifest(root, shard.manifest_file):
        kept[record["class"]] += record["kept"]
    marker = {"shard": shard.index, "num_shards": shard.count, "classes": list(classes),
              "kept": {str(c): kept[c] for c in classes}, "manifest_sha256": _sha256(manifest)}
    _atomic_write(osp.join(root, shard.done_file), json.dumps(marker, indent=1).encode())
    waiting = unfinished_shards(root, shard.count)
    if waiting:
        logger.info(f"{shard} finished; the last shard to finish merges {MANIFEST_FILE} (waiting: "
                    f"{'; '.join(waiting)})")
        return False
    try:
        merge_shard_manifests(root, shard.count)
    except ShardMergeError as err:
        logger.error(f"{shard} finished, but {err}")
        return False
    return True


def _adopt_merged_records(root: str, shard: Shard, classes: Sequence[int], real_images: dict[int, list[str]]) -> None:
    """Start ``shard`` from ``manifest.jsonl``'s records of its classes (and their cached captions) when those
    include all of its own records and more: a plain run, or a merged run with another shard count, got further."""
    mine = set(classes)
    merged = [r for r in read_manifest(root) if r["class"] in mine]
    own = read_manifest(root, shard.manifest_file)
    merged_lines = {json.dumps(r) for r in merged}
    if len(merged) <= len(own) or any(json.dumps(r) not in merged_lines for r in own):
        return
    _atomic_write(osp.join(root, shard.manifest_file), _jsonl(merged))
    cache = CaptionCache(root, shard.captions_file)
    paths = {p for c in classes for p in real_images.get(c, [])}
    adopted = {p: c for p, c in _read_json(osp.join(root, CAPTIONS_FILE), {}).items()
               if p in paths and p not in cache.captions}
    if adopted:
        cache.captions.update(adopted)
        _atomic_write(cache.path, json.dumps(cache.captions, indent=0).encode())
    logger.info(f"{shard}: starting from the {len(merged)} records of its classes in {MANIFEST_FILE} "
                f"({len(adopted)} cached captions)")


def reconcile_manifests(root: str, shard: Shard, classes: Sequence[int], real_images: dict[int, list[str]]) -> None:
    """Before generating.  A plain run merges the finished shards it finds (it must not treat their images as
    orphans).  A shard refuses while another shard count is unmerged, drops its done marker and adopts
    ``manifest.jsonl``'s records of its classes when those are ahead of its own manifest."""
    os.makedirs(root, exist_ok=True)
    if not shard.sharded:
        pending = unmerged_shard_counts(root)
        if len(pending) > 1:
            raise ShardMergeError(f"{root} holds unmerged manifests of {' and '.join(map(str, pending))}-shard runs; "
                                  "merge one with --merge --num-shards N and delete the others")
        if pending:
            logger.info(f"{root}: merging the manifests of a {pending[0]}-shard run before generating")
            merge_shard_manifests(root, pending[0])
        return
    pending = unmerged_shard_counts(root, skip=shard.count)
    if pending:
        raise ShardMergeError(f"{root} holds unmerged manifests of a {pending[0]}-shard run; merge them first "
                              f"(--merge --num-shards {pending[0]}) or run with --num-shards {pending[0]}")
    done = osp.join(root, shard.done_file)
    if osp.isfile(done):
        os.remove(done)  # until this run finishes, the shard is not complete
    _adopt_merged_records(root, shard, shard.select(classes), real_images)


def _check_class_folders(classes: Sequence[int], classnames: Sequence[str]) -> None:
    """Two classes with one folder would overwrite each other's images (and cross shard boundaries)."""
    seen: dict[str, int] = {}
    for label in classes:
        folder = class_folder(classnames[label])
        if folder in seen:
            raise ValueError(f"classes {seen[folder]} ({classnames[seen[folder]]!r}) and {label} "
                             f"({classnames[label]!r}) share the image folder {folder!r}; rename one of them")
        seen[folder] = label


# ------------------------------------------------------------------------------------------------ the loop
class CaptionCache:
    """Captions of real images (path -> caption) in ``captions.json``, so a re-run never captions twice."""

    def __init__(self, root: str, name: str = CAPTIONS_FILE) -> None:
        self.path = osp.join(root, name)
        self.captions: dict[str, str] = _read_json(self.path, {})

    def get(self, paths: Sequence[str], label: int, classname: str, captioner: Captioner,
            read: Callable[[str], Image.Image]) -> list[str]:
        """Captions of ``paths`` (one class); uncached ones are captioned in one call with a seed derived from
        their paths, so an interrupted and an uninterrupted run write the same captions."""
        todo = sorted({p for p in paths if p not in self.captions})
        if todo:
            torch.manual_seed(derive_seed("caption", *todo) % (2 ** 63))
            new = captioner([read(p) for p in todo], [classname] * len(todo), [label] * len(todo))
            self.captions.update(zip(todo, new))
            _atomic_write(self.path, json.dumps(self.captions, indent=0).encode())
        return [self.captions[p] for p in paths]


def _save_image(image: Image.Image, path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    image.convert("RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def _decide(predicted: Optional[int], label: int, exhausted: bool, has_filter: bool, policy: str) -> tuple[bool, str]:
    """(keep, reason) for one image: the filter first, then the budget (fix of spec §3.7.6)."""
    if not has_filter:
        return True, "no_filter"
    if predicted == label:
        return True, "filter_pass"
    if exhausted and policy == "accept":
        return True, "budget"
    return False, "filter_fail"


def generate_class(label: int, classname: str, real_paths: Sequence[str], cfg: GenerationConfig, root: str,
                   manifest: Manifest, captions: CaptionCache, captioner: Captioner, generator: Callable,
                   image_filter: Optional[ZeroShotFilter], read: Callable[[str], Image.Image]) -> int:
    """Run cycles for one class until ``images_per_class`` are kept (or the budget stops it); returns kept."""
    kept, cycle, discards = manifest.class_state(label)
    folder = class_folder(classname)
    budget_kept = 0

    def exhausted() -> bool:
        return (cycle if cfg.budget_unit == "cycles" else discards) >= cfg.cycle_budget

    with tqdm(total=cfg.images_per_class, initial=min(kept, cfg.images_per_class), desc=classname[:30],
              unit="img", leave=False) as bar:
        while kept < cfg.images_per_class:
            if image_filter is not None and exhausted() and cfg.budget_policy == "stop":
                logger.warning(f"{classname}: budget of {cfg.cycle_budget} {cfg.budget_unit} spent with {kept}/"
                               f"{cfg.images_per_class} images kept; stopping this class (budget_policy stop)")
                break
            rng = random.Random(f"{cfg.seed}-{label}-{cycle}")
            picks = [rng.choice(real_paths) for _ in range(cfg.batch_size)]  # with replacement (DISEF)
            order = list(range(cfg.batch_size))
            rng.shuffle(order)  # caption of one real image, latent of another
            batch_captions = captions.get(picks, label, classname, captioner, read)
            prompts = [cfg.prompt_template.format(caption=batch_captions[order[i]], classname=classname)
                       for i in range(cfg.batch_size)]
            seeds = [derive_seed(cfg.seed, label, cycle, slot) for slot in range(cfg.batch_size)]
            images = generator([prepare_init_image(read(p), cfg.init_size, cfg.pad_to_square) for p in picks],
                               prompts, seeds)
            predictions = image_filter.predict(images) if image_filter is not None else [None] * len(images)
            records = []
            for slot, (image, predicted) in enumerate(zip(images, predictions)):
                if kept >= cfg.images_per_class:
                    break  # the class is full: the rest of the batch is not used
                keep, reason = _decide(predicted, label, exhausted(), image_filter is not None, cfg.budget_policy)
                name = f"{folder}_{cycle:05d}_{slot:02d}.jpg"
                relative = osp.join(folder, name) if keep else (
                    osp.join("_discarded", folder, name) if cfg.save_discarded else None)
                if relative is not None:
                    _save_image(image, osp.join(root, relative))
                records.append({"class": label, "classname": classname, "file": relative, "kept": keep,
                                "reason": reason, "predicted": predicted, "prompt": prompts[slot],
                                "caption": batch_captions[order[slot]], "caption_source": picks[order[slot]],
                                "init_image": picks[slot], "seed": seeds[slot], "cycle": cycle, "slot": slot})
                kept, discards, budget_kept = kept + keep, discards + (not keep), budget_kept + (reason == "budget")
                bar.update(int(keep))
            manifest.append(records)  # after the images: a kill in between leaves orphans, removed on resume
            cycle += 1
    if budget_kept:
        logger.warning(f"{classname}: {budget_kept} images kept without passing the filter (budget of "
                       f"{cfg.cycle_budget} {cfg.budget_unit} spent; budget_policy accept, as DISEF)")
    return kept


def _write_config(root: str, cfg: GenerationConfig) -> None:
    """Save ``cfg`` as ``generation_config.json`` (every shard writes the same), warning about changed settings."""
    config_path = osp.join(root, CONFIG_FILE)
    if osp.isfile(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        changed = {k: (previous.get(k), v) for k, v in asdict(cfg).items() if previous.get(k) != v and k != "classes"}
        if changed:
            logger.warning(f"{root} was generated with other settings {changed}; new images use the new ones")
    _atomic_write(config_path, json.dumps(asdict(cfg), indent=1).encode())


def run_generation(cfg: GenerationConfig, root: str, real_images: dict[int, list[str]], classnames: Sequence[str],
                   captioner: Captioner, generator: Callable, image_filter: Optional[ZeroShotFilter],
                   read: Optional[Callable[[str], Image.Image]] = None, shard: Shard = Shard()) -> dict[int, int]:
    """Generate for every class in ``cfg.classes`` (all when empty) that ``shard`` owns; resumes from ``root``'s
    manifest (the shard's own one when sharded, merged into ``manifest.jsonl`` by the last shard to finish)."""
    cfg.check()
    os.makedirs(root, exist_ok=True)
    classes = list(cfg.classes) or sorted(real_images)
    _check_class_folders(classes, classnames)
    _write_config(root, cfg)
    reconcile_manifests(root, shard, classes, real_images)
    mine = shard.select(classes)
    folders = {class_folder(classnames[c]) for c in mine} if shard.sharded else None
    manifest = Manifest(root, shard.manifest_file, folders).load()
    captions = CaptionCache(root, shard.captions_file)
    read = read or _read_rgb
    if shard.sharded:
        logger.info(f"{shard}: {len(mine)} of {len(classes)} classes {mine}")
    kept = {}
    for label in tqdm(mine, desc="classes", unit="class"):
        if not real_images.get(label):
            raise ValueError(f"class {label} ({classnames[label]}) has no real image to start from")
        kept[label] = generate_class(label, classnames[label], real_images[label], cfg, root, manifest, captions,
                                     captioner, generator, image_filter, read)
    logger.info(f"Kept images per class: {kept}")
    if shard.sharded:
        finish_shard(root, shard, mine)
    return kept


def _read_rgb(path: str) -> Image.Image:
    from dassl.utils import read_image

    return read_image(path)


# ------------------------------------------------------------------------------------------------ models
def load_llava(model_id: str, device: str, quantize_4bit: bool = False):
    """LLaVA-1.5 (hf) model and processor; ``quantize_4bit``: NF4 + double quant, fp16 compute (needs CUDA)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    kwargs: dict = {"dtype": torch.float16 if device != "cpu" else torch.float32}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float16,
                                                           bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}  # cuda:k: this shard's GPU only
    model = LlavaForConditionalGeneration.from_pretrained(model_id, **kwargs)
    if not quantize_4bit:  # a bitsandbytes model refuses .to() (§4.2)
        model.to(device)
    return model.eval(), AutoProcessor.from_pretrained(model_id)


def load_sd_img2img(model_id: str, device: str):
    """Stable Diffusion img2img (fp16 on GPU, fp32 on CPU) without the safety checker."""
    from diffusers import StableDiffusionImg2ImgPipeline

    dtype = torch.float16 if device != "cpu" else torch.float32
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_id, torch_dtype=dtype, safety_checker=None,
                                                          requires_safety_checker=False)
    return pipe.to(device)


def tiny_img2img_pipeline(words: Iterable[str] = (), seed: int = 0):
    """A randomly initialised, offline Stable Diffusion img2img pipeline (spec §4.3) for tests and smoke runs."""
    import tempfile

    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, \
        UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    pieces = sorted({w.lower() + "</w>" for w in ["a", "photo", "of", *words] if w.isalpha()})
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    with tempfile.TemporaryDirectory() as folder:
        with open(osp.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(osp.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, unk_token="<unk>", model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64],
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            algorithm_type="dpmsolver++", steps_offset=1)
    return StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


TINY_CHAT_TEMPLATE = (  # the llava-1.5-hf chat format (§4.2): "USER: <image>\n<text> ASSISTANT:"
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ item['text'] + ' ' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def tiny_llava(words: Iterable[str] = (), seed: int = 0):
    """A randomly initialised, offline LLaVA model and processor (spec §4.4) for tests and smoke runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

    base = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:", "a", "photo", "of", "the"]
    extra = sorted({w for text in words for w in re.findall(r"\w+", text)} - set(base))
    vocab = {token: i for i, token in enumerate(base + extra)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_size, patch = 8, 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch, num_channels=3, hidden_size=32,
                                       projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=37),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, intermediate_size=37, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(image_size // patch) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TINY_CHAT_TEMPLATE)
    return model, processor


# ------------------------------------------------------------------------------------------------ command line
SHARDING_HELP = """\
sharded generation (several GPUs, nodes or array tasks, one output folder):
  Shard I of N generates exactly the classes c with c % N == I (a class is never split: same images as one
  process). Without --shard-index/--num-shards, I and N come from torchrun (RANK, WORLD_SIZE; each process uses
  GPU LOCAL_RANK), srun (SLURM_PROCID, SLURM_NTASKS) or a Slurm array (SLURM_ARRAY_TASK_ID,
  SLURM_ARRAY_TASK_COUNT; ids counted from SLURM_ARRAY_TASK_MIN). Each shard writes
  manifest.shard-I-of-N.jsonl, resumes from it when re-run, and marks itself finished; the last shard to
  finish merges all of them into manifest.jsonl (class order, as a single-process run would write it).

  torchrun --nproc-per-node 8 scripts/disef/generate.py --dataset-config-file D.yaml --output-dir OUT ...
  sbatch --array=0-15 --gpus=1 --wrap "python scripts/disef/generate.py --dataset-config-file D.yaml \\
      --output-dir OUT ..."            # re-submit failed array tasks with the same command
  python scripts/disef/generate.py --output-dir OUT --merge    # merge by hand; refuses while a shard is
                                                              # missing or unfinished, naming it
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option, and the sharding epilog as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DISEF synthetic augmentation pipeline (scripts/disef/generate.py)",
                                     epilog=SHARDING_HELP, formatter_class=_HelpFormatter)
    data = parser.add_argument_group("real images (a vlprompt dataset: its few-shot train split)")
    data.add_argument("--root", default="", help="datasets root (DATASET.ROOT)")
    data.add_argument("--dataset-config-file", default="",
                      help="e.g. configs/datasets/flowers102.yaml (required unless --merge)")
    data.add_argument("--seed", type=int, default=1, help="few-shot sampling seed and generation seed")
    data.add_argument("--num-shots", type=int, default=16, help="real shots per class (< 1: all)")
    data.add_argument("--subsample-classes", default="base", choices=("all", "base", "new"))
    data.add_argument("--output-dir", required=True, help="where class folders and manifest.jsonl go")
    gen = parser.add_argument_group("generation")
    defaults = GenerationConfig()
    gen.add_argument("--images-per-class", type=int, default=defaults.images_per_class)
    gen.add_argument("--batch-size", type=int, default=defaults.batch_size)
    gen.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="diffusion steps")
    gen.add_argument("--strength", type=float, default=defaults.strength, help="img2img strength")
    gen.add_argument("--cfg-strength", type=float, default=defaults.guidance_scale, help="classifier-free guidance")
    gen.add_argument("--init-size", type=int, default=defaults.init_size, help="0: native size (notebook)")
    gen.add_argument("--no-pad", action="store_true", help="do not pad init images to a square")
    gen.add_argument("--prompt-template", default=defaults.prompt_template)
    gen.add_argument("--sd-model", default=DEFAULT_SD_MODEL)
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--save-discarded", action="store_true")
    cap = parser.add_argument_group("captions")
    cap.add_argument("--captioner", default="llava", choices=("llava", "template"),
                     help="template: 'a photo of a {class}.' without a captioning model")
    cap.add_argument("--llava-model", default=DEFAULT_LLAVA_MODEL)
    cap.add_argument("--quantize-4bit", action="store_true", help="load LLaVA in 4-bit NF4 (CUDA + bitsandbytes)")
    cap.add_argument("--caption-query", default=defaults.caption_query)
    cap.add_argument("--caption-hint", default=defaults.caption_hint)
    cap.add_argument("--caption-label", default=defaults.caption_label, choices=CAPTION_LABELS)
    cap.add_argument("--chat-format", default=defaults.chat_format, choices=CHAT_FORMATS)
    cap.add_argument("--caption-temperature", type=float, default=defaults.caption_temperature)
    cap.add_argument("--caption-max-new-tokens", type=int, default=defaults.caption_max_new_tokens)
    flt = parser.add_argument_group("filter and class selection")
    flt.add_argument("--filter-backbone", default="ViT-B/16",
                     help="CLIP name/path/tiny name, 'open_clip:<arch>:<pretrained>', or 'none' (keep everything)")
    flt.add_argument("--filter-lora", default="", help="lora_weights.pt of a trained CLIP_LoRA run (improved DISEF)")
    flt.add_argument("--filter-template", default="", help="'' = the dataset's template")
    flt.add_argument("--cycle-budget", type=int, default=defaults.cycle_budget)
    flt.add_argument("--budget-unit", default=defaults.budget_unit, choices=BUDGET_UNITS)
    flt.add_argument("--budget-policy", default=defaults.budget_policy, choices=BUDGET_POLICIES)
    flt.add_argument("--f1-threshold", type=float, default=-1.0,
                     help="> 0: only classes whose zero-shot val F1 is below it (improved DISEF: 0.70)")
    flt.add_argument("--f1-backbone", default="", help="zero-shot CLIP for the F1 selection ('' = filter backbone)")
    shards = parser.add_argument_group("sharding (see the end of this help)")
    shards.add_argument("--shard-index", type=int, default=None,
                        help="this process generates the classes c with c %% N == I; None: from RANK, SLURM_PROCID "
                             "or SLURM_ARRAY_TASK_ID, else 0")
    shards.add_argument("--num-shards", type=int, default=None,
                        help="N; None: from WORLD_SIZE, SLURM_NTASKS or SLURM_ARRAY_TASK_COUNT, else 1")
    shards.add_argument("--merge", action="store_true",
                        help="only merge the finished shard manifests of --output-dir into manifest.jsonl")
    parser.add_argument("--tiny-models", action="store_true",
                        help="offline smoke run: random tiny LLaVA and Stable Diffusion (meaningless images)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="dataset config overrides: KEY VALUE ...")
    return parser


def _dataset(args):
    from dassl.data.datasets import build_dataset
    from vlprompt.trainers.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.dataset_config_file)
    cfg.DATASET.ROOT, cfg.SEED = args.root, args.seed
    cfg.DATASET.NUM_SHOTS, cfg.DATASET.SUBSAMPLE_CLASSES = args.num_shots, args.subsample_classes
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg, build_dataset(cfg)


def _zero_shot_f1_classes(args, dataset, template: str) -> list[int]:
    backbone = args.f1_backbone or args.filter_backbone
    if not dataset.val:
        raise ValueError(f"--f1-threshold needs a val split; {type(dataset).__name__} has none")
    classifier = load_clip_filter(backbone, dataset.classnames, template, args.device)
    labels = [d.label for d in dataset.val]
    predictions = []
    for start in tqdm(range(0, len(dataset.val), 64), desc="zero-shot F1 (val)"):
        predictions += classifier.predict([_read_rgb(d.impath) for d in dataset.val[start:start + 64]])
    classes = low_f1_classes(labels, predictions, dataset.num_classes, args.f1_threshold)
    logger.info(f"{len(classes)}/{dataset.num_classes} classes have zero-shot val F1 < {args.f1_threshold}: "
                f"{[dataset.classnames[c] for c in classes]}")
    return classes


def _complete(root: str, cfg: GenerationConfig, classes: Sequence[int], manifest_file: str) -> bool:
    """True when the manifest already holds ``images_per_class`` kept images for every class of ``classes``."""
    kept: dict[int, int] = defaultdict(int)
    for record in read_manifest(root, manifest_file):
        kept[record["class"]] += record["kept"]
    return all(kept[c] >= cfg.images_per_class for c in classes)


def _merge_only(args) -> int:
    count = args.num_shards
    if count is None:
        env_shard = shard_from_env()
        count = env_shard.count if env_shard.sharded else None
    merge_shard_manifests(args.output_dir, count)
    return 0


def _generate(args, shard: Shard) -> int:
    cfg, dataset = _dataset(args)
    from ..zsclip import dataset_template

    template = args.filter_template or dataset_template(cfg.DATASET.NAME)
    real: dict[int, list[str]] = defaultdict(list)
    for datum in dataset.train_x:
        real[datum.label].append(datum.impath)
    gen_cfg = GenerationConfig(
        images_per_class=args.images_per_class, batch_size=args.batch_size, num_inference_steps=args.steps,
        strength=args.strength, guidance_scale=args.cfg_strength, seed=args.seed, cycle_budget=args.cycle_budget,
        budget_unit=args.budget_unit, budget_policy=args.budget_policy, init_size=args.init_size,
        pad_to_square=not args.no_pad, prompt_template=args.prompt_template, caption_query=args.caption_query,
        caption_hint=args.caption_hint, caption_label=args.caption_label, chat_format=args.chat_format,
        caption_temperature=args.caption_temperature, caption_max_new_tokens=args.caption_max_new_tokens,
        save_discarded=args.save_discarded)
    gen_cfg.check()
    args.device = device = shard_device(args.device)  # also for the F1 pass
    if shard.sharded:
        logger.info(f"{shard} of {args.output_dir} on {device}")
    if args.f1_threshold > 0:
        gen_cfg.classes = _zero_shot_f1_classes(args, dataset, template)
    classes = gen_cfg.classes or sorted(real)
    reconcile_manifests(args.output_dir, shard, classes, dict(real))
    if _complete(args.output_dir, gen_cfg, shard.select(classes), shard.manifest_file):
        logger.info(f"{args.output_dir}: every class{f' of {shard}' if shard.sharded else ''} already has "
                    f"{gen_cfg.images_per_class} images; nothing to do")
        if shard.sharded:
            finish_shard(args.output_dir, shard, shard.select(classes))
        return 0
    words = [w for name in dataset.classnames for w in name.split()]
    if args.tiny_models:
        logger.warning("--tiny-models: random tiny LLaVA and Stable Diffusion; the images are noise (smoke run)")
        pipe = tiny_img2img_pipeline(words).to(device)
        model, processor = tiny_llava(words + args.caption_query.split())
        captioner: Captioner = LlavaCaptioner(model.to(device), processor, gen_cfg)
    else:
        pipe = load_sd_img2img(args.sd_model, device)
        if args.captioner == "llava":
            model, processor = load_llava(args.llava_model, device, args.quantize_4bit)
            captioner = LlavaCaptioner(model, processor, gen_cfg)
        else:
            captioner = TemplateCaptioner()
    image_filter = None
    if args.filter_backbone != "none":
        image_filter = load_clip_filter(args.filter_backbone, dataset.classnames, template, device, args.filter_lora)
    run_generation(gen_cfg, args.output_dir, dict(real), dataset.classnames, captioner,
                   Img2ImgGenerator(pipe, gen_cfg), image_filter, shard=shard)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; bad input (a missing shard, file or key, a bad value) is one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.merge and not args.dataset_config_file:
        parser.error("--dataset-config-file is required (unless --merge)")
    try:
        return _merge_only(args) if args.merge else _generate(args, resolve_shard(args.shard_index, args.num_shards))
    except USER_ERRORS as err:
        if os.environ.get("VLPROMPT_DEBUG") == "1":
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        logger.error(f"error: {message}  (set VLPROMPT_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
