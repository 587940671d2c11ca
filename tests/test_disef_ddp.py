"""DISEF with synthetic images under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals its single-process run.

Covered beyond the registry-wide test (which trains on real images only): the paired real/synthetic loaders sharded
per rank, Mixup/CutMix partners taken across ranks, the F1-guided class selection from a sharded val split, the
"mixed" batching whose real/synthetic split differs between ranks and last batches split unevenly (global row counts
in the loss), early stopping,
and rank 0 alone writing ``lora_weights.pt`` and ``early_stopping.json``.  Dropout and random augmentations are
off: they draw per rank (a different, equally valid draw; see docs/methods/disef.md).
"""
from __future__ import annotations

import glob
import json
import os.path as osp
from collections import defaultdict

import pytest
import torch

from helpers import build_cfg, last_accuracy, run_forked, run_train, train_argv

CONFIG = "configs/trainers/DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8.yaml"
# SGD instead of the config's AdamW: Adam divides by the root of the squared gradients, so an element whose gradient
# is near 0 turns the float rounding of two half-batch sums into a visible step; SGD keeps it at rounding level
COMMON = ["DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
          "OPTIM.MAX_EPOCH", "3", "OPTIM.NAME", "sgd", "OPTIM.LR", "0.01", "TRAIN.CHECKPOINT_FREQ", "1",
          "TRAINER.DISEF.DROPOUT", "0.0", "INPUT.TRANSFORMS", "['normalize']", "TEST.FEATURE_CACHE.ENABLED", "False"]
VARIANTS = {
    # 1 shot and 1 synthetic image per class: fewer than a batch, so both halves split unevenly (3 + 2 rows)
    "paired_mixing_f1_uneven": ["DATASET.NUM_SHOTS", "1", "TRAINER.DISEF.MAX_SYN_PER_CLASS", "1",
                                "TRAINER.DISEF.MIXUP_ALPHA", "0.8", "TRAINER.DISEF.CUTMIX_ALPHA", "1.0",
                                "TRAINER.DISEF.F1_THRESHOLD", "0.5"],
    "mixed_early_stop": ["TRAINER.DISEF.BATCHING", "mixed", "TRAINER.DISEF.LAMBDA", "0.6", "TEST.FINAL_MODEL",
                         "best_val", "TRAINER.DISEF.PATIENCE", "1", "TRAINER.DISEF.LR_STEP", "epoch"],
}


class CopyGenerator:
    def __call__(self, images, prompts, seeds):
        return [im.copy() for im in images]


@pytest.fixture(scope="module")
def synthetic_dir(data_root, tmp_path_factory):
    """3 synthetic images per base class (the real images themselves), so the paired loaders have odd lengths."""
    from dassl.data.datasets import build_dataset
    from vlprompt.trainers.disef.config import GenerationConfig
    from vlprompt.trainers.disef.models import TemplateCaptioner
    from vlprompt.trainers.disef.pipeline import run_generation

    cfg = build_cfg("DISEF", CONFIG, str(tmp_path_factory.mktemp("unused")), data_root, opts=COMMON[:4])
    dataset = build_dataset(cfg)
    real = defaultdict(list)
    for datum in dataset.train_x:
        real[datum.label].append(datum.impath)
    root = str(tmp_path_factory.mktemp("syn"))
    run_generation(GenerationConfig(images_per_class=3, batch_size=3, init_size=32), root, dict(real),
                   dataset.classnames, TemplateCaptioner(), CopyGenerator(), None)
    return root


def _state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_processes_equal_one(variant, data_root, synthetic_dir, tmp_path):
    opts = COMMON + ["TRAINER.DISEF.SYN_DIR", synthetic_dir] + VARIANTS[variant]
    runs = {}
    for mode in ("single", "ddp"):
        out = str(tmp_path / mode)
        argv = train_argv("DISEF", CONFIG, data_root, out, backbone="tiny-vit", opts=opts)
        if mode == "single":
            assert run_train(argv) == 0
        else:
            assert run_forked(argv, nproc=2) == [0, 0]
        runs[mode] = out
    single, ddp = runs["single"], runs["ddp"]
    files = sorted(osp.relpath(p, single) for p in glob.glob(osp.join(single, "lora", "model*.pth.tar*")))
    assert files and files == sorted(osp.relpath(p, ddp) for p in glob.glob(osp.join(ddp, "lora", "model*.pth.tar*")))
    for rel in files:
        a, b = _state(osp.join(single, rel))["state_dict"], _state(osp.join(ddp, rel))["state_dict"]
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), (rel, key, (a[key] - b[key]).abs().max())
    a, b = _state(osp.join(single, "lora_weights.pt")), _state(osp.join(ddp, "lora_weights.pt"))
    assert a["metadata"] == b["metadata"]
    assert [osp.basename(p) for p in glob.glob(osp.join(ddp, "log.txt*"))] == ["log.txt"]
    assert not glob.glob(osp.join(ddp, "*.tmp*"))
    assert last_accuracy(osp.join(ddp, "log.txt")) == last_accuracy(osp.join(single, "log.txt"))
    log = open(osp.join(ddp, "log.txt")).read()
    assert "Synthetic images:" in log and " syn 0." in log
    if variant == "mixed_early_stop":
        with open(osp.join(single, "early_stopping.json")) as f, open(osp.join(ddp, "early_stopping.json")) as g:
            assert json.load(f) == json.load(g)
    else:
        assert "classes get synthetic images" in log
