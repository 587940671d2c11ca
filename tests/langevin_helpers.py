"""Helpers for the LangevinCoOp tests: a learnable synthetic CIFAR-10-LT copy and in-process runs of train.py.

``write_shape_cifar10`` writes the official CIFAR-10 "python version" layout with 32x32 coloured shapes instead of
photos (``datasets.synthetic.write_cifar10_shapes``, which the demo uses too), so the ``CIFAR10LT`` reader
(long-tail subsampling included) runs unchanged and the classes ("red circle", ...) are visually distinct.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional

from helpers import REPO_ROOT, build, run_train  # noqa: F401  (run_train: re-exported for the tests)
from vlprompt.datasets.synthetic import class_names, write_cifar10_shapes

CONFIG_DIR = osp.join(REPO_ROOT, "configs", "trainers", "LangevinCoOp")
PHASE1_CONFIG = osp.join(CONFIG_DIR, "tiny_vit_ctx4_csc_nonoise_ep6_batch32.yaml")
PHASE2_CONFIG = osp.join(CONFIG_DIR, "tiny_vit_ctx4_csc_ld_ep12_batch32.yaml")
DATASET_CONFIG = osp.join(REPO_ROOT, "configs", "datasets", "cifar10_lt.yaml")
CIFAR_FOLDER = ("cifar-10-python", "cifar-10-batches-py")  # <root>/<dataset_dir>/<base_folder>


def write_shape_cifar10(root: str, num_classes: int = 4, train_per_class: int = 40, test_per_class: int = 10,
                        seed: int = 0) -> List[str]:
    """The project's writer (``datasets.synthetic.write_cifar10_shapes``) under ``root``; return the class names."""
    write_cifar10_shapes(osp.join(root, *CIFAR_FOLDER), num_classes, train_per_class, test_per_class, seed)
    return class_names(num_classes)


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
