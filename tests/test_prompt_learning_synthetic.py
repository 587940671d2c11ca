"""The demo's story, asserted: on Synthetic base classes CoOp beats zero-shot CLIP with the pre-trained tiny CLIP.

Uses exactly the demo's configs (configs/trainers/{ZeroshotCLIP/tiny_vit, CoOp/tiny_vit_ep50_ctxv1}.yaml), seed 1,
16 shots, base classes, and a tiny CLIP pre-trained here by clip/pretrain_tiny.py (about 3 s).  Zero-shot must be
clearly above chance (20% for 5 classes) and CoOp above zero-shot; about 20 s on one core.
"""
from __future__ import annotations

import pytest

from helpers import build_cfg, eval_only, train_and_test

BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


def test_coop_beats_zero_shot_on_base_classes(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    """Zero-shot on base classes is clearly above chance, and CoOp trained on 16 shots beats it."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    _, coop = train_and_test(build_cfg("CoOp", "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml",
                                       str(tmp_path / "coop"), data_root, opts=BASE))
    assert zero_shot >= 30.0, f"zero-shot {zero_shot:.1f}% is not clearly above chance (20%)"
    assert coop > zero_shot, f"CoOp {coop:.1f}% <= zero-shot {zero_shot:.1f}%"
