"""DISEF's synthetic augmentation pipeline: caption real shots, img2img them with Stable Diffusion, filter with CLIP.

Turrisi da Costa et al., "Diversified in-domain synthesis with efficient fine-tuning for few-shot classification",
arXiv:2312.03046; reference vturrisi/disef@501ec4b ``generation/synthetic_augmentation_pipeline.py``.

Per class, one *cycle* generates ``batch_size`` images until ``images_per_class`` are kept: real shots of the
class are drawn with replacement as init images; their captions (cached per real image) are permuted, so each init
image gets the caption of (usually) another real image; Stable Diffusion img2img with DPM-Solver++ turns each into
a new image; a zero-shot CLIP (or a trained CLIP-LoRA) must predict the target class until the class has spent its
budget, after which images are kept unfiltered (or the class stops).  Every kept image is
``<output>/<class_folder>/<class_folder>_<cycle>_<slot>.jpg`` with one record in ``manifest.jsonl``; randomness is
derived from (seed, class, cycle, slot), so a re-run continues exactly where a killed run stopped.  Settings and
presets: ``config.py``; models: ``models.py``; files: ``manifest.py``; sharding: ``sharding.py``; command line:
``cli.py`` (``scripts/disef/generate.py``).  Differences from the reference and the seed notebook:
docs/methods/disef.md.
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from PIL import Image

from dassl.utils import progress

from .config import GenerationConfig, class_folder, derive_seed
from .manifest import CONFIG_FILE, IMAGE_EXTENSIONS, MANIFEST_FILE, CaptionCache, Manifest, atomic_write, read_manifest
from .models import Captioner, ZeroShotFilter, read_rgb
from .sharding import Shard, finish_shard, reconcile_manifests, unmerged_shard_counts

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95


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



def low_f1_classes(labels: Sequence[int], predictions: Sequence[int], num_classes: int,
                   threshold: float = 0.70) -> list[int]:
    """Classes whose F1 (sklearn, ``zero_division=0``) is below ``threshold``: improved DISEF's selection."""
    from sklearn.metrics import precision_recall_fscore_support

    _, _, f1, _ = precision_recall_fscore_support(list(labels), list(predictions), labels=list(range(num_classes)),
                                                  zero_division=0)
    return [c for c in range(num_classes) if f1[c] < threshold]



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



def check_class_folders(classes: Sequence[int], classnames: Sequence[str]) -> None:
    """Two classes with one folder would overwrite each other's images (and cross shard boundaries)."""
    seen: dict[str, int] = {}
    for label in classes:
        folder = class_folder(classnames[label])
        if folder in seen:
            raise ValueError(f"classes {seen[folder]} ({classnames[seen[folder]]!r}) and {label} "
                             f"({classnames[label]!r}) share the image folder {folder!r}; rename one of them")
        seen[folder] = label



def _save_image(image: Image.Image, path: str) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    image.convert("RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def _decide(predicted: Optional[int], label: int, exhausted: bool, has_filter: bool, policy: str) -> tuple[bool, str]:
    """(keep, reason) for one image: the filter first, then the budget (the notebook checked the budget first)."""
    if not has_filter:
        return True, "no_filter"
    if predicted == label:
        return True, "filter_pass"
    if exhausted and policy == "accept":
        return True, "budget"
    return False, "filter_fail"


@dataclass
class Cycle:
    """One cycle's inputs and outputs: ``picks[i]`` is slot i's init image, ``order[i]`` its caption's slot."""

    picks: list[str]
    order: list[int]
    captions: list[str]  # of the picks, in pick order
    prompts: list[str]
    seeds: list[int]
    images: list[Image.Image]
    predictions: list[Optional[int]]


def run_cycle(label: int, classname: str, real_paths: Sequence[str], cycle: int, cfg: GenerationConfig,
              captions: CaptionCache, captioner: Captioner, generator: Callable,
              image_filter: Optional[ZeroShotFilter], read: Callable[[str], Image.Image]) -> Cycle:
    """Draw init images and captions, generate ``batch_size`` images and classify them (all seeded by the cycle)."""
    rng = random.Random(f"{cfg.seed}-{label}-{cycle}")
    picks = [rng.choice(real_paths) for _ in range(cfg.batch_size)]  # with replacement (DISEF)
    order = list(range(cfg.batch_size))
    rng.shuffle(order)  # caption of one real image, latent of another
    batch_captions = captions.get(picks, label, classname, captioner, read)
    prompts = [cfg.prompt_template.format(caption=batch_captions[order[i]], classname=classname)
               for i in range(cfg.batch_size)]
    seeds = [derive_seed(cfg.seed, label, cycle, slot) for slot in range(cfg.batch_size)]
    images = generator([prepare_init_image(read(p), cfg.init_size, cfg.pad_to_square) for p in picks], prompts, seeds)
    predictions = image_filter.predict(images) if image_filter is not None else [None] * len(images)
    return Cycle(picks, order, batch_captions, prompts, seeds, images, predictions)


def generate_class(label: int, classname: str, real_paths: Sequence[str], cfg: GenerationConfig, root: str,
                   manifest: Manifest, captions: CaptionCache, captioner: Captioner, generator: Callable,
                   image_filter: Optional[ZeroShotFilter], read: Callable[[str], Image.Image]) -> int:
    """Run cycles for one class until ``images_per_class`` are kept (or the budget stops it); returns kept."""
    kept, cycle, discards = manifest.class_state(label)
    folder = class_folder(classname)
    budget_kept = 0

    def exhausted() -> bool:
        return (cycle if cfg.budget_unit == "cycles" else discards) >= cfg.cycle_budget

    while kept < cfg.images_per_class:
        if image_filter is not None and exhausted() and cfg.budget_policy == "stop":
            logger.warning(f"{classname}: budget of {cfg.cycle_budget} {cfg.budget_unit} spent with {kept}/"
                           f"{cfg.images_per_class} images kept; stopping this class (budget_policy stop)")
            break
        out = run_cycle(label, classname, real_paths, cycle, cfg, captions, captioner, generator, image_filter, read)
        records = []
        for slot, (image, predicted) in enumerate(zip(out.images, out.predictions)):
            if kept >= cfg.images_per_class:
                break  # the class is full: the rest of the batch is not used
            keep, reason = _decide(predicted, label, exhausted(), image_filter is not None, cfg.budget_policy)
            name = f"{folder}_{cycle:05d}_{slot:02d}.jpg"
            relative = osp.join(folder, name) if keep else (
                osp.join("_discarded", folder, name) if cfg.save_discarded else None)
            if relative is not None:
                _save_image(image, osp.join(root, relative))
            records.append({"class": label, "classname": classname, "file": relative, "kept": keep,
                            "reason": reason, "predicted": predicted, "prompt": out.prompts[slot],
                            "caption": out.captions[out.order[slot]], "caption_source": out.picks[out.order[slot]],
                            "init_image": out.picks[slot], "seed": out.seeds[slot], "cycle": cycle, "slot": slot})
            kept, discards, budget_kept = kept + keep, discards + (not keep), budget_kept + (reason == "budget")
        manifest.append(records)  # after the images: a kill in between leaves orphans, removed on resume
        cycle += 1
    logger.info(f"{classname}: {kept}/{cfg.images_per_class} images kept after {cycle} cycles ({discards} discarded)")
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
    atomic_write(config_path, json.dumps(asdict(cfg), indent=1).encode())


def run_generation(cfg: GenerationConfig, root: str, real_images: dict[int, list[str]], classnames: Sequence[str],
                   captioner: Captioner, generator: Callable, image_filter: Optional[ZeroShotFilter],
                   read: Optional[Callable[[str], Image.Image]] = None, shard: Shard = Shard()) -> dict[int, int]:
    """Generate for every class in ``cfg.classes`` (all when empty) that ``shard`` owns; resumes from ``root``'s
    manifest (the shard's own one when sharded, merged into ``manifest.jsonl`` by the last shard to finish)."""
    cfg.check()
    os.makedirs(root, exist_ok=True)
    classes = list(cfg.classes) or sorted(real_images)
    check_class_folders(classes, classnames)
    _write_config(root, cfg)
    reconcile_manifests(root, shard, classes, real_images)
    mine = shard.select(classes)
    folders = {class_folder(classnames[c]) for c in mine} if shard.sharded else None
    manifest = Manifest(root, shard.manifest_file, folders).load()
    captions = CaptionCache(root, shard.captions_file)
    read = read or read_rgb
    if shard.sharded:
        logger.info(f"{shard}: {len(mine)} of {len(classes)} classes {mine}")
    kept = {}
    for label in progress(mine, "classes"):
        if not real_images.get(label):
            raise ValueError(f"class {label} ({classnames[label]}) has no real image to start from")
        kept[label] = generate_class(label, classnames[label], real_images[label], cfg, root, manifest, captions,
                                     captioner, generator, image_filter, read)
    logger.info(f"Kept images per class: {kept}")
    if shard.sharded:
        finish_shard(root, shard, mine)
    return kept

