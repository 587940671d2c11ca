"""A procedurally drawn dataset that needs no download: coloured shapes on textured backgrounds.

Class ``i`` is the shape ``SHAPES[i % 6]`` painted in ``COLORS[(i + i // 6) % 8]``, so every
class name is a readable phrase ("red circle", "green square", ...) and the 48 possible
classes are all distinct. Images are written once as real JPEG files under
``DATASET.ROOT/<dataset_dir>/images/<class_folder>/`` with a CoOp split JSON beside them, and
are read through the same split-JSON / few-shot / base-new path as the CoOp datasets.
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
import pickle
import random
import shutil
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dassl.config import register_cfg_defaults
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase

from .splits import load_or_create_fewshot, read_split, save_split, subsample_classes

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = (
    ("red", (215, 40, 40)),
    ("green", (40, 165, 60)),
    ("blue", (40, 80, 220)),
    ("yellow", (235, 205, 40)),
    ("purple", (140, 60, 185)),
    ("orange", (245, 135, 30)),
    ("pink", (240, 125, 185)),
    ("cyan", (40, 195, 205)),
)
MAX_CLASSES = len(SHAPES) * len(COLORS)
SPLIT_FILE = "split_zhou_Synthetic.json"


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.DATASET.SYNTHETIC = type(cfg)()
    # Number of classes (1..48); class i = SHAPES[i % 6] in COLORS[(i + i // 6) % 8]
    cfg.DATASET.SYNTHETIC.NUM_CLASSES = 10
    # Images generated per class for the train / val / test splits
    cfg.DATASET.SYNTHETIC.NUM_TRAIN = 16
    cfg.DATASET.SYNTHETIC.NUM_VAL = 4
    cfg.DATASET.SYNTHETIC.NUM_TEST = 12
    # Side of the square images in pixels
    cfg.DATASET.SYNTHETIC.IMAGE_SIZE = 64
    # Seed of the drawing RNG (independent of cfg.SEED, which only drives few-shot sampling)
    cfg.DATASET.SYNTHETIC.GEN_SEED = 0


def class_spec(index: int) -> Tuple[str, str, Tuple[int, int, int]]:
    """(shape, colour name, RGB) of class ``index``."""
    shape = SHAPES[index % len(SHAPES)]
    color_name, rgb = COLORS[(index + index // len(SHAPES)) % len(COLORS)]
    return shape, color_name, rgb


def class_names(num_classes: int) -> List[str]:
    return [f"{class_spec(i)[1]} {class_spec(i)[0]}" for i in range(num_classes)]


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    """Vertices of ``shape`` centred at (cx, cy) with radius r, rotated by ``angle`` radians."""
    if shape == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "diamond":
        pts = [(0.6 * r * math.cos(a), r * math.sin(a)) for a in (k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.42 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.33 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def _background(rng: random.Random, size: int) -> Image.Image:
    """A muted, textured background: a random base tone with stripes, blobs and blur."""
    base = tuple(rng.randint(60, 150) for _ in range(3))
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 9)):
        tone = tuple(max(0, min(255, c + rng.randint(-35, 35))) for c in base)
        if rng.random() < 0.5:
            x = rng.randint(0, size)
            draw.line([(x, 0), (x + rng.randint(-size, size), size)], fill=tone, width=rng.randint(2, 6))
        else:
            x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(3, size // 4)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    return img.filter(ImageFilter.GaussianBlur(radius=1.2))


def draw_shape(img: Image.Image, rng: random.Random, shape: str, rgb: Tuple[int, int, int]) -> None:
    """Paint one ``shape`` of colour ``rgb`` (slightly jittered) at a random place and size."""
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in rgb)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rng.uniform(-0.3, 0.3)), fill=fill)


def render_image(rng: random.Random, size: int, shape: str, rgb: Tuple[int, int, int]) -> Image.Image:
    img = _background(rng, size)
    draw_shape(img, rng, shape, rgb)
    return img


def generate_synthetic(dataset_dir: str, num_classes: int, counts: Tuple[int, int, int], size: int, gen_seed: int) -> None:
    """Draw every image and write the split JSON; written to a temp folder then renamed (atomic)."""
    tmp_dir = f"{dataset_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    image_dir = osp.join(tmp_dir, "images")
    names = class_names(num_classes)
    splits = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        shape, _, rgb = class_spec(label)
        folder = name.replace(" ", "_")
        os.makedirs(osp.join(image_dir, folder), exist_ok=True)
        rng = random.Random(f"{gen_seed}-{label}")
        for split, n in zip(("train", "val", "test"), counts):
            for k in range(n):
                path = osp.join(image_dir, folder, f"{split}_{k:04d}.jpg")
                render_image(rng, size, shape, rgb).save(path, quality=95)
                splits[split].append(Datum(impath=path, label=label, classname=name))
    save_split(splits["train"], splits["val"], splits["test"], osp.join(tmp_dir, SPLIT_FILE), image_dir)
    try:
        os.replace(tmp_dir, dataset_dir)
    except OSError:
        # Another process finished first: keep its copy.
        shutil.rmtree(tmp_dir, ignore_errors=True)


@DATASET_REGISTRY.register()
class Synthetic(DatasetBase):
    """Coloured shapes on textured backgrounds, generated deterministically on first use."""

    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "synthetic"

    def __init__(self, cfg):
        sc = cfg.DATASET.SYNTHETIC
        if not 1 <= sc.NUM_CLASSES <= MAX_CLASSES:
            raise ValueError(f"DATASET.SYNTHETIC.NUM_CLASSES={sc.NUM_CLASSES}; choose 1..{MAX_CLASSES}")
        counts = (sc.NUM_TRAIN, sc.NUM_VAL, sc.NUM_TEST)
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT or "./data"))
        variant = f"c{sc.NUM_CLASSES}_n{counts[0]}-{counts[1]}-{counts[2]}_px{sc.IMAGE_SIZE}_seed{sc.GEN_SEED}"
        self.dataset_dir = osp.join(root, self.dataset_dir, variant)
        self.image_dir = osp.join(self.dataset_dir, "images")
        split_path = osp.join(self.dataset_dir, SPLIT_FILE)
        if not osp.exists(split_path):
            logger.info(f"Generating the synthetic dataset at {self.dataset_dir}")
            os.makedirs(osp.dirname(self.dataset_dir), exist_ok=True)
            generate_synthetic(self.dataset_dir, sc.NUM_CLASSES, counts, sc.IMAGE_SIZE, sc.GEN_SEED)
        train, val, test = read_split(split_path, self.image_dir)
        train, val = load_or_create_fewshot(self, self.dataset_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)


def write_cifar10_shapes(folder: str, num_classes: int = 10, train_per_class: int = 100, test_per_class: int = 20,
                         seed: int = 0) -> None:
    """Write 32x32 shapes of the first ``num_classes`` classes as CIFAR-10's "python version" into ``folder``.

    The files of the official archive (``batches.meta``, ``data_batch_1..5``, ``test_batch``): Python-2-style
    pickles (protocol 2, bytes keys), ``data`` rows of 3072 uint8 (the R, G and B planes of an image), labels
    interleaved as in the real files.  ``CIFAR10LT`` reads them as the real dataset (long-tail cut included), so
    CIFAR-LT methods run offline.  Drawn from their own stream (``"cifar-<seed>-<index>"``).
    """
    os.makedirs(folder, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        with open(osp.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(name: str, labels: List[int]) -> dict:
        images = [render_image(random.Random(f"cifar-{seed}-{name}-{i}"), 32, class_spec(c)[0], class_spec(c)[2])
                  for i, c in enumerate(labels)]
        rows = np.stack([np.asarray(im, np.uint8).transpose(2, 0, 1).reshape(-1) for im in images])  # (N, 3072)
        return {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]}

    train_labels = np.arange(num_classes * train_per_class) % num_classes
    for k, chunk in enumerate(np.array_split(train_labels, 5)):
        dump(f"data_batch_{k + 1}", batch(f"data_batch_{k + 1}", chunk.tolist()))
    dump("test_batch", batch("test_batch", (np.arange(num_classes * test_per_class) % num_classes).tolist()))
    dump("batches.meta", {b"label_names": [n.encode() for n in class_names(num_classes)],
                          b"num_cases_per_batch": num_classes * train_per_class // 5, b"num_vis": 3072})
