"""A procedurally drawn long-tailed multi-label dataset: several coloured shapes co-occur in one image.

Offline stand-in for COCO-LT / VOC-LT (LMPT, Xia et al., arXiv:2305.04536).
Classes are those of ``Synthetic`` ("red circle", "green square", ...; ``datasets/synthetic.py``). Each image
is a 2x2 grid: every present class is drawn (``draw_shape``) in its own random cell, so no shape hides another,
on a grey background (``BACKGROUND plain``) or on a ``render_image`` textured tile (``textured``; a random
tiny CLIP reads almost nothing from those). Class ``c`` is present with probability
``MAX_PRESENCE * IMBALANCE^(-c / (C - 1))`` (long-tailed: class 0 is the most frequent), at most ``MAX_LABELS``
per image and at least one. Every image has a caption such as
"a photo of a red circle and an orange star", used by LMPT's class-specific embedding loss.

Like COCO-LT / VOC-LT the dataset exposes ``class_freq`` / ``neg_class_freq`` / ``cls_num_list`` (training
positives per class) and ``groups`` head / medium / tail — here the three thirds of the classes ranked by
training count (the absolute 100 / 20 thresholds of the benchmarks do not fit a few hundred images).
Images are written once under ``DATASET.ROOT/synthetic_multilabel/<variant>/`` with an ``annotations.json``.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
import shutil
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from dassl.config import register_cfg_defaults
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.utils import read_json, write_json

from .synthetic import MAX_CLASSES, class_names, class_spec, draw_shape, render_image

logger = logging.getLogger(__name__)

ANNOTATION_FILE = "annotations.json"
GRID = 2  # images are GRID x GRID cells, one shape per cell at most
SPLITS = ("train", "val", "test")
BACKGROUNDS = ("plain", "textured")
GROUP_NAMES = ("head", "medium", "tail")


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.DATASET.SYNTHETIC_ML = type(cfg)()
    # Number of classes (2..48), the classes of the Synthetic dataset
    cfg.DATASET.SYNTHETIC_ML.NUM_CLASSES = 6
    # Images generated for the train / val / test splits
    cfg.DATASET.SYNTHETIC_ML.NUM_TRAIN = 240
    cfg.DATASET.SYNTHETIC_ML.NUM_VAL = 60
    cfg.DATASET.SYNTHETIC_ML.NUM_TEST = 150
    # Presence probability of the most frequent class (class 0)
    cfg.DATASET.SYNTHETIC_ML.MAX_PRESENCE = 0.6
    # Ratio of the presence probabilities of the most and the least frequent class (>= 1)
    cfg.DATASET.SYNTHETIC_ML.IMBALANCE = 10.0
    # Most shapes per image (1..4, one per grid cell); extra present classes are dropped at random
    cfg.DATASET.SYNTHETIC_ML.MAX_LABELS = 3
    # Side of the square images in pixels (even)
    cfg.DATASET.SYNTHETIC_ML.IMAGE_SIZE = 64
    # Seed of the drawing RNG (independent of cfg.SEED)
    cfg.DATASET.SYNTHETIC_ML.GEN_SEED = 0
    # plain (grey background; readable by a random tiny CLIP) or textured (Synthetic's textured tiles)
    cfg.DATASET.SYNTHETIC_ML.BACKGROUND = "plain"


def presence_probabilities(num_classes: int, max_presence: float, imbalance: float) -> List[float]:
    """``max_presence * imbalance^(-c / (C - 1))`` for ``c = 0..C-1``."""
    return [max_presence * imbalance ** (-c / max(num_classes - 1, 1)) for c in range(num_classes)]


def sample_labels(rng: random.Random, probs: Sequence[float], max_labels: int) -> Tuple[int, ...]:
    """Independent presences, at least one (drawn by ``probs``) and at most ``max_labels``; sorted."""
    present = [c for c, p in enumerate(probs) if rng.random() < p]
    if not present:
        present = rng.choices(range(len(probs)), weights=probs, k=1)
    if len(present) > max_labels:
        present = rng.sample(present, max_labels)
    return tuple(sorted(present))


def caption_for(labels: Sequence[int], names: Sequence[str]) -> str:
    """"a photo of a red circle, a blue star and an orange square" (labels in the given order)."""
    phrases = [f"{'an' if names[c][0] in 'aeiou' else 'a'} {names[c]}" for c in labels]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a photo of {listed}"


def draw_multilabel(rng: random.Random, size: int, labels: Sequence[int], background: str = "plain") -> Image.Image:
    """A ``size`` x ``size`` image with one shape per label, each in its own random grid cell.

    ``background="plain"``: a grey image, shapes drawn with ``draw_shape``; ``"textured"``: every shape on its
    own ``render_image`` tile (random textured background), empty cells grey.
    """
    cell = size // GRID
    grey = rng.randint(100, 130)
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    cells = rng.sample(range(GRID * GRID), len(labels))
    for c, where in zip(labels, cells):
        shape, _, rgb = class_spec(c)
        if background == "textured":
            tile = render_image(rng, cell, shape, rgb)
        else:
            tile = Image.new("RGB", (cell, cell), (grey, grey, grey))
            draw_shape(tile, rng, shape, rgb)
        img.paste(tile, ((where % GRID) * cell, (where // GRID) * cell))
    return img


def generate(dataset_dir: str, num_classes: int, counts: Sequence[int], probs: Sequence[float],
             max_labels: int, size: int, gen_seed: int, background: str) -> None:
    """Draw all splits and write ``annotations.json``; built in a temp folder, then renamed (atomic)."""
    tmp_dir = f"{dataset_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(osp.join(tmp_dir, "images"))
    names = class_names(num_classes)
    annotations: Dict[str, list] = {"classnames": names}
    for split, n in zip(SPLITS, counts):
        rng = random.Random(f"{gen_seed}-{split}")
        items = []
        for k in range(n):
            labels = sample_labels(rng, probs, max_labels)
            relpath = osp.join("images", f"{split}_{k:05d}.jpg")
            draw_multilabel(rng, size, labels, background).save(osp.join(tmp_dir, relpath), quality=95)
            items.append([relpath, list(labels), caption_for(labels, names)])
        annotations[split] = items
    write_json(annotations, osp.join(tmp_dir, ANNOTATION_FILE))
    try:
        os.replace(tmp_dir, dataset_dir)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp_dir, ignore_errors=True)


def rank_groups(class_freq: Sequence[int]) -> Dict[str, List[int]]:
    """Classes ranked by training count (ties by index), cut into head / medium / tail thirds."""
    order = sorted(range(len(class_freq)), key=lambda c: (-class_freq[c], c))
    bounds = np.linspace(0, len(order), len(GROUP_NAMES) + 1).round().astype(int)
    return {name: sorted(order[bounds[i]:bounds[i + 1]]) for i, name in enumerate(GROUP_NAMES)}


@DATASET_REGISTRY.register()
class SyntheticMultiLabel(DatasetBase):
    """Co-occurring coloured shapes with long-tailed class counts and a caption per image."""

    dataset_dir = "synthetic_multilabel"

    def __init__(self, cfg):
        sc = cfg.DATASET.SYNTHETIC_ML
        if not 2 <= sc.NUM_CLASSES <= MAX_CLASSES:
            raise ValueError(f"DATASET.SYNTHETIC_ML.NUM_CLASSES={sc.NUM_CLASSES}; choose 2..{MAX_CLASSES}")
        if not 1 <= sc.MAX_LABELS <= GRID * GRID:
            raise ValueError(f"DATASET.SYNTHETIC_ML.MAX_LABELS={sc.MAX_LABELS}; choose 1..{GRID * GRID}")
        if sc.IMBALANCE < 1 or not 0 < sc.MAX_PRESENCE <= 1:
            raise ValueError(f"DATASET.SYNTHETIC_ML: IMBALANCE={sc.IMBALANCE} must be >= 1 and "
                             f"MAX_PRESENCE={sc.MAX_PRESENCE} in (0, 1]")
        if sc.BACKGROUND not in BACKGROUNDS:
            raise ValueError(f"DATASET.SYNTHETIC_ML.BACKGROUND={sc.BACKGROUND!r}; "
                             f"choose one of {', '.join(BACKGROUNDS)}")
        if cfg.DATASET.NUM_SHOTS >= 1 or cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            raise ValueError("SyntheticMultiLabel: multi-label data supports neither DATASET.NUM_SHOTS >= 1 nor "
                             "DATASET.SUBSAMPLE_CLASSES != 'all'; reset them to -1 and 'all'")
        counts = (sc.NUM_TRAIN, sc.NUM_VAL, sc.NUM_TEST)
        probs = presence_probabilities(sc.NUM_CLASSES, sc.MAX_PRESENCE, sc.IMBALANCE)
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT or "./data"))
        variant = (f"c{sc.NUM_CLASSES}_n{counts[0]}-{counts[1]}-{counts[2]}_p{sc.MAX_PRESENCE:g}_r{sc.IMBALANCE:g}"
                   f"_m{sc.MAX_LABELS}_{sc.BACKGROUND}_px{sc.IMAGE_SIZE}_seed{sc.GEN_SEED}")
        self.dataset_dir = osp.join(root, self.dataset_dir, variant)
        annotation_path = osp.join(self.dataset_dir, ANNOTATION_FILE)
        if not osp.exists(annotation_path):
            logger.info(f"Generating the synthetic multi-label dataset at {self.dataset_dir}")
            os.makedirs(osp.dirname(self.dataset_dir), exist_ok=True)
            generate(self.dataset_dir, sc.NUM_CLASSES, counts, probs, sc.MAX_LABELS, sc.IMAGE_SIZE, sc.GEN_SEED,
                     sc.BACKGROUND)
        annotations = read_json(annotation_path)
        names = annotations["classnames"]
        train, val, test = (self._read(annotations[split], names) for split in SPLITS)
        super().__init__(train_x=train, val=val, test=test, classnames=names)
        freq = np.zeros(len(names), dtype=np.int64)
        for item in train:
            freq[list(item.label)] += 1
        self.class_freq = freq
        self.neg_class_freq = len(train) - freq
        self.cls_num_list = freq.tolist()
        self.groups = rank_groups(self.cls_num_list)
        logger.info(f"SyntheticMultiLabel: train counts {self.cls_num_list}, "
                    + ", ".join(f"{k} {v}" for k, v in self.groups.items()))

    def _read(self, items: Sequence[list], names: Sequence[str]) -> List[Datum]:
        return [Datum(impath=osp.join(self.dataset_dir, relpath), label=tuple(labels),
                      classname=",".join(names[c] for c in labels), caption=caption)
                for relpath, labels, caption in items]
