"""Helpers for the LangevinCoOp tests: a learnable synthetic CIFAR-10-LT copy and in-process runs of train.py.

``write_shape_cifar10`` writes the official CIFAR-10 "python version" layout (``batches.meta``,
``data_batch_1..5``, ``test_batch``; bytes keys, pickle protocol 2, as the official files) with 32x32 coloured shapes
drawn by ``datasets/synthetic.py`` instead of photos, so the ``CIFAR10LT`` reader (long-tail subsampling
included) runs unchanged and the classes ("red circle", ...) are visually distinct.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import random
from typing import List, Optional

import numpy as np

from helpers import REPO_ROOT, build, run_train  # noqa: F401  (run_train: re-exported for the tests)
from vlprompt.datasets.synthetic import class_names, class_spec, render_image

CONFIG_DIR = osp.join(REPO_ROOT, "configs", "trainers", "LangevinCoOp")
PHASE1_CONFIG = osp.join(CONFIG_DIR, "tiny_vit_ctx4_csc_nonoise_ep6_batch32.yaml")
PHASE2_CONFIG = osp.join(CONFIG_DIR, "tiny_vit_ctx4_csc_ld_ep12_batch32.yaml")
DATASET_CONFIG = osp.join(REPO_ROOT, "configs", "datasets", "cifar10_lt.yaml")
CIFAR_FOLDER = ("cifar-10-python", "cifar-10-batches-py")  # <root>/<dataset_dir>/<base_folder>


def _rows(labels: List[int], rng: random.Random) -> np.ndarray:
    """CIFAR rows ``(N, 3072)``: each image's R, G and B planes, row-major."""
    rows = []
    for label in labels:
        shape, _, rgb = class_spec(label)
        image = np.asarray(render_image(rng, 32, shape, rgb), dtype=np.uint8)  # (32, 32, 3)
        rows.append(image.transpose(2, 0, 1).reshape(-1))  # (3, 32, 32) -> (3072,)
    return np.stack(rows)


def write_shape_cifar10(root: str, num_classes: int = 4, train_per_class: int = 40, test_per_class: int = 10,
                        seed: int = 0) -> List[str]:
    """Write the pickles under ``root/cifar-10-python/cifar-10-batches-py``; return the class names.

    Training labels cycle ``0..C-1`` (like the real file order is mixed), split over the five batches.
    """
    folder = osp.join(root, *CIFAR_FOLDER)
    os.makedirs(folder, exist_ok=True)
    names = class_names(num_classes)
    rng = random.Random(seed)
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": train_per_class * num_classes // 5,
            b"num_vis": 3072}
    with open(osp.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    train_labels = [i % num_classes for i in range(train_per_class * num_classes)]
    test_labels = [i % num_classes for i in range(test_per_class * num_classes)]
    chunks = np.array_split(np.arange(len(train_labels)), 5)
    files = [(f"data_batch_{i + 1}", [train_labels[j] for j in chunk]) for i, chunk in enumerate(chunks)]
    for filename, labels in files + [("test_batch", test_labels)]:
        batch = {b"batch_label": filename.encode(), b"labels": labels, b"data": _rows(labels, rng),
                 b"filenames": [f"{filename}_{i}.png".encode() for i in range(len(labels))]}
        with open(osp.join(folder, filename), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return names


def train_args(root: str, output_dir: str, phase: int, seed: int = 1, init_from: str = "",
               opts: Optional[List[str]] = None, extra: Optional[List[str]] = None) -> List[str]:
    """``train.py`` arguments for a tiny phase-1 or phase-2 LangevinCoOp run on the synthetic CIFAR-10-LT."""
    args = ["--root", root, "--seed", str(seed), "--trainer", "LangevinCoOp",
            "--dataset-config-file", DATASET_CONFIG,
            "--config-file", PHASE1_CONFIG if phase == 1 else PHASE2_CONFIG,
            "--output-dir", output_dir]
    if init_from:
        args += ["--init-from", init_from]
    return args + (extra or []) + ["DATASET.IMB_RATIO", "0.1"] + (opts or [])  # flags before the KEY VALUE opts


def build_trainer_in_process(argv: List[str]):
    """The trainer ``train.py argv`` would build (config merged and frozen, seed set), without running it."""
    from vlprompt.train import build_parser, setup_cfg

    return build(setup_cfg(build_parser().parse_args(argv)))
