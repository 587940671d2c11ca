"""DPT configs: every YAML loads, the default holds the reference settings and the per-dataset presets the
reference grid's best settings (scripts/dpt/base2new.sh is exercised in test_dpt_train.py)."""
from __future__ import annotations

import glob
import os

import pytest

from dpt_helpers import REPO_ROOT
from vlprompt.trainers.config import get_cfg

# The reference grid's best base-to-novel setting per dataset (alvitawa/fomo grid.ipynb):
# dataset config name -> (momentum, init std, n_ctx, epochs)
BEST = {
    "imagenet": (0.0, 0.08, 2, 32), "caltech101": (0.9, 0.08, 1, 8), "oxford_pets": (0.9, 0.001, 3, 16),
    "stanford_cars": (0.0, 0.001, 1, 16), "oxford_flowers": (0.9, 0.08, 2, 16), "food101": (0.9, 0.001, 4, 16),
    "fgvc_aircraft": (0.0, 0.001, 4, 16), "sun397": (0.9, 0.001, 1, 16), "dtd": (0.0, 0.012, 2, 16),
    "eurosat": (0.0, 0.012, 4, 16), "ucf101": (0.9, 0.012, 1, 16),
}
CONFIG_DIR = os.path.join(REPO_ROOT, "configs/trainers/DPT")


def load(name: str):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, f"{name}.yaml"))
    return cfg


def test_default_config_matches_reference_settings():
    cfg = load("vit_b16_c4_ep8_batch4")
    node = cfg.TRAINER.DPT
    assert (node.N_CTX, node.CTX_INIT, node.PREC, node.INIT_STD, node.SELECT_MODE, node.SHARED_VISUAL) == \
        (4, "a photo of a", "fp16", 0.004, "reference", True)
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.MOMENTUM, cfg.OPTIM.WEIGHT_DECAY) == (0.0035, 8, 0.9, 5e-4)
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 4 and cfg.MODEL.BACKBONE.NAME == "ViT-B/16"


@pytest.mark.parametrize("dataset", sorted(BEST))
def test_presets_hold_the_grid_best(dataset):
    cfg = load(f"vit_b16_best_{dataset}")
    assert os.path.isfile(os.path.join(REPO_ROOT, "configs/datasets", f"{dataset}.yaml"))
    got = (cfg.OPTIM.MOMENTUM, cfg.TRAINER.DPT.INIT_STD, cfg.TRAINER.DPT.N_CTX, cfg.OPTIM.MAX_EPOCH)
    assert got == BEST[dataset]
    assert cfg.OPTIM.LR == 0.0035 and cfg.TRAINER.DPT.CTX_INIT == "a photo of a"


def test_every_dpt_config_loads():
    names = [os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))]
    assert len(names) == 13
    for name in names:
        load(name)
