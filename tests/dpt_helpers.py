"""Helpers for the DPT tests: tiny-CLIP configs on a small synthetic dataset, trainers built in-process."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPT_TINY_CONFIG = os.path.join(REPO_ROOT, "configs/trainers/DPT/tiny_vit_c2_ep5_batch4.yaml")
SYNTHETIC_CONFIG = os.path.join(REPO_ROOT, "configs/datasets/synthetic.yaml")
# A small synthetic variant (6 classes, 8 train images each, 32 px) so a DPT epoch is a handful of steps.
SMALL_SYNTHETIC = ["DATASET.SYNTHETIC.NUM_CLASSES", "6", "DATASET.SYNTHETIC.NUM_TRAIN", "8",
                   "DATASET.SYNTHETIC.NUM_VAL", "2", "DATASET.SYNTHETIC.NUM_TEST", "4",
                   "DATASET.SYNTHETIC.IMAGE_SIZE", "32"]


def dpt_args(data_root: str, output_dir: str, seed: int = 1, extra: Optional[List[str]] = None,
             opts: Optional[Sequence[str]] = None) -> List[str]:
    """``train.py`` argv for DPT on the small synthetic data with the tiny ViT CLIP."""
    return (["--root", data_root, "--seed", str(seed), "--trainer", "DPT",
             "--dataset-config-file", SYNTHETIC_CONFIG, "--config-file", DPT_TINY_CONFIG,
             "--output-dir", output_dir] + (extra or []) + SMALL_SYNTHETIC + list(opts or []))


@torch.no_grad()
def train_set_loss(trainer) -> float:
    """Mean cross-entropy over the training images with the test transform (no augmentation, fixed order)."""
    from dassl.data.data_manager import build_data_loader

    loader = build_data_loader(trainer.cfg, data_source=trainer.dm.dataset.train_x, batch_size=64,
                               tfm=trainer.dm.tfm_test, is_train=False)
    trainer.set_model_mode("eval")
    total, count = 0.0, 0
    for batch in loader:
        image, label = trainer.parse_batch_test(batch)
        total += F.cross_entropy(trainer.model_inference(image), label, reduction="sum").item()
        count += label.numel()
    return total / count
