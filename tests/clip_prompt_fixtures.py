"""Helpers for the CLIP prompt-trainer tests: configs from the real YAMLs, in-process runs, a tiny CLIP.

Imported by ``tests/test_coop*.py``, ``tests/test_cocoop.py``, ``tests/test_zsclip.py`` and
``tests/test_prompt_*.py`` (``tests/conftest.py`` is not touched).  Everything runs on the CPU.
"""
from __future__ import annotations

import os.path as osp
from functools import lru_cache
from typing import Optional, Sequence

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC_YAML = osp.join(REPO, "configs", "datasets", "synthetic.yaml")


def build_cfg(trainer: str, config_file: str, output_dir: str, root: str, seed: int = 1,
              opts: Sequence[str] = (), backbone: str = ""):
    """The frozen config ``train.py`` would build for these flags (dataset: Synthetic)."""
    from vlprompt.train import build_parser, setup_cfg

    argv = ["--root", root, "--seed", str(seed), "--trainer", trainer, "--dataset-config-file", SYNTHETIC_YAML,
            "--config-file", osp.join(REPO, config_file), "--output-dir", output_dir]
    if backbone:
        argv += ["--backbone", backbone]
    return setup_cfg(build_parser().parse_args(argv + list(opts)))


def build(cfg):
    """Seed as ``train.py`` does, then build the registered trainer."""
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def train_and_test(cfg) -> tuple[object, float]:
    """Train (which ends with a test) and return the trainer and its test accuracy."""
    trainer = build(cfg)
    trainer.train()
    return trainer, trainer.test()


def eval_only(cfg, model_dir: str = "", load_epoch: Optional[int] = None) -> tuple[object, float]:
    """``train.py --eval-only``: build, load, test."""
    trainer = build(cfg)
    trainer.load_model(model_dir, epoch=load_epoch)
    return trainer, trainer.test()


@lru_cache(maxsize=None)
def tiny_clip_fp32(arch: str = "vit"):
    """A seeded random tiny CLIP in fp32 (shared, do not modify)."""
    from vlprompt.clip.model import build_model
    from vlprompt.clip.tiny import tiny_state_dict

    return build_model(tiny_state_dict(arch), fp16=False).float().eval()


@pytest.fixture(scope="session")
def pretrained_tiny_dir(tmp_path_factory) -> str:
    """A folder holding ``tiny-vit-synthetic.pth`` pre-trained with the demo's recipe (about 3 s)."""
    from vlprompt.clip.pretrain_tiny import PretrainConfig, pretrain_tiny_clip, save_state_dict
    from vlprompt.trainers.common.clip_loading import PRETRAINED_TINY

    folder = tmp_path_factory.mktemp("pretrained")
    state_dict, _ = pretrain_tiny_clip(PretrainConfig(arch="vit"))
    save_state_dict(state_dict, str(folder / PRETRAINED_TINY["tiny-vit-synthetic"][0]))
    return str(folder)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one torch thread (tiny models; far faster when cores are shared), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    """A dataset root for the module; the Synthetic dataset is drawn there on first use (well under a second)."""
    return str(tmp_path_factory.mktemp("data"))
