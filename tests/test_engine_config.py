"""CoOp/CoCoOp/dataset YAMLs merge into our config; unknown keys and bad values fail naming the key."""
import argparse

import pytest

from vlprompt import train
from vlprompt.trainers.config import get_cfg

COMMON = """
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: {batch}
  TEST:
    BATCH_SIZE: 100
  NUM_WORKERS: 8
INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: {epochs}
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAIN:
  PRINT_FREQ: {print_freq}
MODEL:
  BACKBONE:
    NAME: "{backbone}"
"""

# coop_family.md §6.3: (file stem, epochs, backbone, ctx_init)
COOP_FILES = [
    ("rn50", 200, "RN50", ""), ("rn50_ep100", 100, "RN50", ""), ("rn50_ep50", 50, "RN50", ""),
    ("rn50_ctxv1", 200, "RN50", "a photo of a"), ("rn50_ep50_ctxv1", 50, "RN50", "a photo of a"),
    ("rn101", 200, "RN101", ""), ("rn101_ep50", 50, "RN101", ""), ("vit_b32", 200, "ViT-B/32", ""),
    ("vit_b32_ep50", 50, "ViT-B/32", ""), ("vit_b16", 200, "ViT-B/16", ""), ("vit_b16_ep50", 50, "ViT-B/16", ""),
    ("vit_b16_ep100", 100, "ViT-B/16", ""), ("vit_b16_ctxv1", 200, "ViT-B/16", "a photo of a"),
    ("vit_b16_ep50_ctxv1", 50, "ViT-B/16", "a photo of a"), ("vit_b16_ep100_ctxv1", 100, "ViT-B/16", "a photo of a"),
]
# coop_family.md §6.4: (file stem, n_ctx, ctx_init)
COCOOP_FILES = [
    ("vit_b16_c4_ep10_batch1_ctxv1", 4, "a photo of a"), ("vit_b16_c4_ep10_batch1", 4, ""),
    ("vit_b16_c8_ep10_batch1", 8, ""), ("vit_b16_c16_ep10_batch1", 16, ""),
]
RN50_VAL = """
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 200
  TEST:
    BATCH_SIZE: 200
  NUM_WORKERS: 8
INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
MODEL:
  BACKBONE:
    NAME: "RN50"
"""
DATASET_NAMES = ["Caltech101", "DescribableTextures", "EuroSAT", "FGVCAircraft", "Food101", "ImageNet", "ImageNetA",
                 "ImageNetR", "ImageNetSketch", "ImageNetV2", "OxfordFlowers", "OxfordPets", "StanfordCars", "SUN397",
                 "UCF101"]


def _args(**kw):
    args = train.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("stem,epochs,backbone,ctx_init", COOP_FILES)
def test_coop_yaml_merges(tmp_path, stem, epochs, backbone, ctx_init):
    text = COMMON.format(batch=32, epochs=epochs, print_freq=5, backbone=backbone)
    if ctx_init:
        text += f'TRAINER:\n  COOP:\n    CTX_INIT: "{ctx_init}"\n'
    ds = _write(tmp_path, "dtd.yaml", 'DATASET:\n  NAME: "DescribableTextures"\n')
    cfg = train.setup_cfg(_args(config_file=_write(tmp_path, f"{stem}.yaml", text), dataset_config_file=ds,
                                trainer="CoOp", opts=["TRAINER.COOP.N_CTX", "16", "TRAINER.COOP.CSC", "False",
                                                      "TRAINER.COOP.CLASS_TOKEN_POSITION", "end",
                                                      "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]))
    assert cfg.INPUT.SIZE == (224, 224) and isinstance(cfg.INPUT.SIZE, tuple)
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    assert isinstance(cfg.INPUT.TRANSFORMS, tuple) and cfg.INPUT.TRANSFORMS[0] == "random_resized_crop"
    assert cfg.OPTIM.MAX_EPOCH == epochs and cfg.MODEL.BACKBONE.NAME == backbone
    assert cfg.TRAINER.COOP.CTX_INIT == ctx_init and cfg.TRAINER.COOP.N_CTX == 16
    assert cfg.DATASET.NAME == "DescribableTextures" and cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    assert cfg.TRAINER.NAME == "CoOp"


@pytest.mark.parametrize("stem,n_ctx,ctx_init", COCOOP_FILES)
def test_cocoop_yaml_merges(tmp_path, stem, n_ctx, ctx_init):
    text = COMMON.format(batch=1, epochs=10, print_freq=20, backbone="ViT-B/16")
    text += f'TRAINER:\n  COCOOP:\n    N_CTX: {n_ctx}\n    CTX_INIT: "{ctx_init}"\n    PREC: "fp16"\n'
    cfg = train.setup_cfg(_args(config_file=_write(tmp_path, f"{stem}.yaml", text)))
    assert cfg.TRAINER.COCOOP.N_CTX == n_ctx and cfg.TRAINER.COCOOP.CTX_INIT == ctx_init
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 1 and cfg.TRAIN.PRINT_FREQ == 20


def test_rn50_val_and_dataset_yamls_merge(tmp_path):
    cfg = train.setup_cfg(_args(config_file=_write(tmp_path, "rn50_val.yaml", RN50_VAL)))
    assert cfg.DATALOADER.TEST.BATCH_SIZE == 200
    for name in DATASET_NAMES:
        cfg = train.setup_cfg(_args(dataset_config_file=_write(tmp_path, "d.yaml", f'DATASET:\n  NAME: "{name}"\n')))
        assert cfg.DATASET.NAME == name


def test_extend_cfg_adds_coop_keys_with_reference_defaults():
    cfg = get_cfg()
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.CSC, cfg.TRAINER.COOP.CTX_INIT) == (16, False, "")
    assert (cfg.TRAINER.COOP.PREC, cfg.TRAINER.COOP.CLASS_TOKEN_POSITION) == ("fp16", "end")
    assert (cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.COCOOP.CTX_INIT, cfg.TRAINER.COCOOP.PREC) == (16, "", "fp16")
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _write(tmp_path, "bad.yaml", "TRAINER:\n  COOP:\n    NCTX: 4\n")
    with pytest.raises(train.ConfigError, match=r"TRAINER\.COOP\.NCTX.*bad\.yaml.*TRAINER\.COOP\.N_CTX"):
        train.setup_cfg(_args(config_file=path))


def test_unknown_key_on_command_line_names_key():
    with pytest.raises(train.ConfigError, match=r"OPTIM\.LRR"):
        train.setup_cfg(_args(opts=["OPTIM.LRR", "0.1"]))


def test_int_for_float_is_rejected_as_in_yacs():
    with pytest.raises(train.ConfigError, match="Type mismatch"):
        train.setup_cfg(_args(opts=["OPTIM.LR", "1"]))


def test_missing_config_file_names_path(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(train.ConfigError, match="nope.yaml"):
        train.setup_cfg(_args(config_file=missing))


def test_seed_zero_is_honoured():
    assert train.setup_cfg(_args(seed=0)).SEED == 0
    assert train.setup_cfg(_args(seed=-1)).SEED == -1
