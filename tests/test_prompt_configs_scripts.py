"""Configs and scripts of the CoOp family: every file loads and says what its name says; scripts run from anywhere.

Config values follow KaiyangZhou/CoOp@ff61507's YAMLs (CoOp: batch 32, MAX_EPOCH from ``_ep<E>`` else 200,
``_ctxv1`` = "a photo of a"; CoCoOp: ``_c<M>``, batch 1, 10 epochs).  The scripts' base-to-new pair is run end
to end on Synthetic with the random tiny CLIP: the test run must load the epoch the training run saved (CoCoOp
hard-coded 10), and a second call must skip.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import yaml

from helpers import REPO_ROOT, build_cfg
from dassl.data.datasets import DATASET_REGISTRY

BACKBONES = {"rn50": "RN50", "rn101": "RN101", "vit_b32": "ViT-B/32", "vit_b16": "ViT-B/16",
             "tiny_vit": "tiny-vit-synthetic"}
SCRIPTS = sorted(glob.glob(osp.join(REPO_ROOT, "scripts", "co*", "*.sh"))) + [osp.join(REPO_ROOT, "scripts", "demo.sh"),
                                                                          osp.join(REPO_ROOT, "scripts", "lib.sh")]


def _configs(trainer: str) -> list[str]:
    return sorted(glob.glob(osp.join(REPO_ROOT, "configs", "trainers", trainer, "*.yaml")))


def test_every_registered_dataset_has_a_config():
    """Each DATASET_REGISTRY name is set by some configs/datasets/*.yaml; CoOp's 15 file stems exist."""
    from vlprompt import datasets  # noqa: F401  (registers every dataset)

    names = {yaml.safe_load(open(path))["DATASET"]["NAME"]
             for path in glob.glob(osp.join(REPO_ROOT, "configs", "datasets", "*.yaml"))}
    missing = sorted(set(DATASET_REGISTRY.registered_names()) - names)
    assert not missing, f"no configs/datasets/*.yaml sets DATASET.NAME to {missing}"
    for stem in ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "imagenet_a", "imagenet_r",
                 "imagenet_sketch", "imagenetv2", "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101"):
        assert osp.isfile(osp.join(REPO_ROOT, "configs", "datasets", f"{stem}.yaml")), stem  # CoOp's file stems


@pytest.mark.parametrize("path", _configs("CoOp"), ids=osp.basename)
def test_coop_configs(path, tmp_path):
    """Each CoOp YAML merges and holds what its name and CoOp's file of that name say."""
    name = osp.splitext(osp.basename(path))[0]
    cfg = build_cfg("CoOp", osp.relpath(path, REPO_ROOT), str(tmp_path), str(tmp_path))
    assert cfg.MODEL.BACKBONE.NAME == BACKBONES[re.match(r"(rn\d+|vit_b\d+|tiny_vit)", name).group(1)]
    if name == "rn50_val":
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 200 and cfg.DATALOADER.TEST.BATCH_SIZE == 200
        return
    epochs = re.search(r"_ep(\d+)", name)
    assert cfg.OPTIM.MAX_EPOCH == (int(epochs.group(1)) if epochs else 200)
    assert cfg.TRAINER.COOP.CTX_INIT == ("a photo of a" if name.endswith("ctxv1") else "")
    assert cfg.OPTIM.NAME == "sgd" and cfg.OPTIM.LR_SCHEDULER == "cosine" and cfg.OPTIM.WARMUP_EPOCH == 1
    if not name.startswith("tiny"):
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.OPTIM.LR == 0.002 and cfg.TRAIN.PRINT_FREQ == 5
        assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic"
        assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]


@pytest.mark.parametrize("path", _configs("CoCoOp"), ids=osp.basename)
def test_cocoop_configs(path, tmp_path):
    """Each CoCoOp YAML merges; _c<M>_ep<E>_batch<B> and ctxv1 match its keys (as CoCoOp's ViT-B/16 ones)."""
    name = osp.splitext(osp.basename(path))[0]
    cfg = build_cfg("CoCoOp", osp.relpath(path, REPO_ROOT), str(tmp_path), str(tmp_path))
    n_ctx, epochs, batch = (int(x) for x in re.search(r"_c(\d+)_ep(\d+)_batch(\d+)", name).groups())
    assert (cfg.TRAINER.COCOOP.N_CTX, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (n_ctx, epochs, batch)
    assert cfg.TRAINER.COCOOP.CTX_INIT == ("a photo of a" if name.endswith("ctxv1") else "")
    if name.startswith("vit_b16"):
        assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and cfg.TRAINER.COCOOP.PREC == "fp16"
        assert (epochs, batch, cfg.OPTIM.LR, cfg.TRAIN.PRINT_FREQ) == (10, 1, 0.002, 20)


@pytest.mark.parametrize("path", _configs("ZeroshotCLIP"), ids=osp.basename)
def test_zeroshot_configs(path, tmp_path):
    """Each ZeroshotCLIP YAML merges and names its backbone."""
    name = osp.splitext(osp.basename(path))[0]
    cfg = build_cfg("ZeroshotCLIP", osp.relpath(path, REPO_ROOT), str(tmp_path), str(tmp_path))
    assert cfg.MODEL.BACKBONE.NAME == BACKBONES[name]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: osp.relpath(p, REPO_ROOT))
def test_scripts_parse(script):
    """bash -n accepts every CoOp-family script."""
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0


def _run(script: str, *args: str, env: dict) -> str:
    result = subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", script), *args], capture_output=True, text=True,
                            env=env, cwd=str(env["HOME"]), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_base2new_scripts_run_from_anywhere_load_the_saved_epoch_and_skip(tmp_path):
    """Train 2 epochs on base, test on new from another cwd: epoch 2 is loaded, then a re-run skips."""
    env = dict(os.environ, HOME=str(tmp_path), DATA="data", OUTPUT="out", PYTHON=sys.executable,
               TRAINER="CoOp", CFG="tiny_vit_ep50_ctxv1", OMP_NUM_THREADS="1", VLPROMPT_SKIP_ENV_INFO="1")
    opts = ["MODEL.BACKBONE.NAME", "tiny-vit"]
    _run("cocoop/base2new_train.sh", "synthetic", "1", *opts, "OPTIM.MAX_EPOCH", "2", env=env)
    stdout = _run("cocoop/base2new_test.sh", "synthetic", "1", *opts, env=env)
    exp = "synthetic/shots_16/CoOp/tiny_vit_ep50_ctxv1/seed1"
    assert osp.isfile(tmp_path / "out" / "base2new" / "train_base" / exp / "prompt_learner" / "model.pth.tar-2")
    assert "model.pth.tar-2" in stdout and "* accuracy:" in stdout  # relative DATA/OUTPUT read from the caller's cwd
    assert osp.isdir(tmp_path / "data" / "synthetic")
    assert "Oops! The results exist" in _run("cocoop/base2new_test.sh", "synthetic", "1", *opts, env=env)
