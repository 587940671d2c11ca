"""CoOp trainer (trainers/coop.py on trainers/common/prompt_trainer.py): freezing, checkpoints, precision, errors.

Runs on the Synthetic dataset with the random tiny CLIP (``--backbone tiny-vit``) and the demo's CoOp config.
"""
from __future__ import annotations

import logging
import os.path as osp

import pytest
import torch

from helpers import build, build_cfg, eval_only
from dassl.utils import load_checkpoint
from vlprompt.train import ConfigError
from vlprompt.trainers.common import prompt_trainer
from vlprompt.trainers.common.prompt_trainer import CheckpointMismatchError

TINY_COOP = "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml"
CTX_DIM = 128  # tiny CLIP text width


def _cfg(root: str, out: str, *opts: str, subsample: str = "base"):
    return build_cfg("CoOp", TINY_COOP, out, root, backbone="tiny-vit",
                     opts=["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", subsample,
                           "OPTIM.MAX_EPOCH", "1", *opts])


@pytest.mark.parametrize("csc", [False, True])
def test_only_the_context_is_trainable(data_root, tmp_path, csc):
    """Trainable = exactly ``prompt_learner.ctx`` with n_ctx x ctx_dim (x n_cls with CSC); one step changes only it."""
    trainer = build(_cfg(data_root, str(tmp_path), "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "8",
                         "TRAINER.COOP.CSC", str(csc)))
    trainable = {n: p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx": (5 if csc else 1) * 8 * CTX_DIM}  # 5 base classes
    assert trainer.get_model_names() == ["prompt_learner"]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 100
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"prompt_learner.ctx"}
    assert not trainer.model.image_encoder.training  # frozen towers stay in eval mode


def test_checkpoint_holds_only_ctx_and_eval_only_reloads_it(data_root, tmp_path):
    """Training saves {ctx} only; --eval-only on the *new* classes loads it strictly and reproduces ctx."""
    run = str(tmp_path / "base")
    trainer = build(_cfg(data_root, run))
    trainer.train()
    path = osp.join(run, "prompt_learner", "model.pth.tar-1")
    checkpoint = load_checkpoint(path)
    assert list(checkpoint["state_dict"]) == ["ctx"] and checkpoint["epoch"] == 1
    new_trainer, accuracy = eval_only(_cfg(data_root, str(tmp_path / "new"), subsample="new"), run, 1)
    assert torch.equal(new_trainer.model.prompt_learner.ctx.cpu(), checkpoint["state_dict"]["ctx"])
    assert new_trainer.dm.dataset.classnames != trainer.dm.dataset.classnames  # other classes, same context
    assert 0 <= accuracy <= 100

    # Upstream CoOp's load_model reads it too: torch.load(path, map_location), class-name buffers deleted if
    # present, load_state_dict(strict=False) into its prompt learner (fp16 ctx, persistent token buffers).
    reference = torch.nn.Module()
    reference.ctx = torch.nn.Parameter(torch.zeros_like(checkpoint["state_dict"]["ctx"], dtype=torch.float16))
    reference.register_buffer("token_prefix", torch.zeros(5, 1, CTX_DIM, dtype=torch.float16))
    reference.register_buffer("token_suffix", torch.zeros(5, 72, CTX_DIM, dtype=torch.float16))
    result = reference.load_state_dict(torch.load(path, map_location="cpu")["state_dict"], strict=False)
    assert result.missing_keys == ["token_prefix", "token_suffix"] and result.unexpected_keys == []
    assert torch.equal(reference.ctx, checkpoint["state_dict"]["ctx"].half())


def test_load_model_drops_reference_buffers_and_is_strict(data_root, tmp_path):
    """A CoOp-era checkpoint (with token_prefix/suffix) loads; an unknown or missing key is an error."""
    trainer = build(_cfg(data_root, str(tmp_path / "run")))
    ctx = torch.randn_like(trainer.model.prompt_learner.ctx)
    folder = tmp_path / "ckpt" / "prompt_learner"
    folder.mkdir(parents=True)
    reference_style = {"ctx": ctx, "token_prefix": torch.zeros(7, 1, CTX_DIM),
                       "token_suffix": torch.zeros(7, 72, CTX_DIM)}
    torch.save({"state_dict": reference_style, "epoch": 3}, folder / "model.pth.tar-3")
    trainer.load_model(str(tmp_path / "ckpt"), epoch=3)
    assert torch.equal(trainer.model.prompt_learner.ctx, ctx)
    torch.save({"state_dict": {"ctx": ctx, "meta_net.linear1.weight": ctx}, "epoch": 4}, folder / "model.pth.tar-4")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \['meta_net.linear1.weight'\]"):
        trainer.load_model(str(tmp_path / "ckpt"), epoch=4)
    torch.save({"state_dict": {}, "epoch": 5}, folder / "model.pth.tar-5")
    with pytest.raises(CheckpointMismatchError, match=r"missing \['ctx'\]"):
        trainer.load_model(str(tmp_path / "ckpt"), epoch=5)
    with pytest.raises(FileNotFoundError, match="model.pth.tar-9"):
        trainer.load_model(str(tmp_path / "ckpt"), epoch=9)


def test_csc_context_of_other_classes_is_a_one_line_error(data_root, tmp_path):
    """CSC contexts trained on 5 base classes do not load for 10 classes: shape mismatch, named."""
    csc = ["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.CSC", "True", "TRAINER.COOP.N_CTX", "2"]
    trainer = build(_cfg(data_root, str(tmp_path / "base"), *csc))
    trainer.save_model(0, str(tmp_path / "base"))
    other = build(_cfg(data_root, str(tmp_path / "all"), *csc, subsample="all"))
    with pytest.raises(CheckpointMismatchError, match=r"ctx \(5, 2, 128\) vs \(10, 2, 128\)"):
        other.load_model(str(tmp_path / "base"), epoch=1)


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(data_root, tmp_path, caplog):
    """PREC fp16 on a CPU runs in fp32 (CLIP and ctx) and says so at WARNING level."""
    with caplog.at_level(logging.WARNING):
        trainer = build(_cfg(data_root, str(tmp_path), "TRAINER.COOP.PREC", "fp16"))
    assert trainer.precision == "fp32" and trainer.model.prompt_learner.ctx.dtype == torch.float32
    assert any("PREC=fp16" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("fp32_master, ctx_dtype", [(True, torch.float32), (False, torch.float16)])
def test_fp32_master_weights_switch(data_root, tmp_path, monkeypatch, fp32_master, ctx_dtype):
    """Under PREC fp16 ctx is an fp32 master copy; FP32_MASTER_WEIGHTS False gives CoOp's fp16 ctx."""
    monkeypatch.setattr(prompt_trainer, "resolve_precision", lambda precision, device: precision)  # fp16 on a CPU
    trainer = build(_cfg(data_root, str(tmp_path), "TRAINER.COOP.PREC", "fp16",
                         "TRAINER.COOP.FP32_MASTER_WEIGHTS", str(fp32_master)))
    assert trainer.precision == "fp16" and trainer.model.text_encoder.dtype == torch.float16  # CLIP: fp16 recipe
    assert trainer.model.prompt_learner.ctx.dtype == ctx_dtype


def test_eot_truncation_switch_gives_the_same_logits(data_root, tmp_path):
    """MODEL.TEXT_ENCODER_TRUNCATE False (all 77 positions) and True give the same logits within 1e-5."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = []
    for truncate in (True, False):
        trainer = build(_cfg(data_root, str(tmp_path), "MODEL.TEXT_ENCODER_TRUNCATE", str(truncate)))
        assert trainer.model.text_encoder.truncate_at_eot is truncate
        with torch.no_grad():
            logits.append(trainer.model(images))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts, match", [
    (["TRAINER.COOP.PREC", "bf32"], "TRAINER.COOP.PREC='bf32'"),
    (["TRAINER.COOP.CLASS_TOKEN_POSITION", "left"], "TRAINER.COOP.CLASS_TOKEN_POSITION='left'"),
    (["TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.N_CTX", "0"], "TRAINER.COOP.N_CTX=0"),
    (["INPUT.SIZE", "(224, 224)"], r"INPUT.SIZE=\(224, 224\) but tiny-vit takes 32x32"),
    (["MODEL.BACKBONE.NAME", "ViT-B/61"], "MODEL.BACKBONE.NAME='ViT-B/61'"),
    (["MODEL.BACKBONE.NAME", "tiny-vit-synthetic"], "pretrain_tiny_clip.py"),
])
def test_check_cfg_errors_name_the_key(data_root, tmp_path, monkeypatch, opts, match):
    """Bad keys fail in check_cfg (before CLIP loads) with one line naming the key and the fix."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", str(tmp_path / "empty"))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build(_cfg(data_root, str(tmp_path), *opts))


def test_unknown_coop_key_is_rejected(data_root, tmp_path):
    """A misspelt TRAINER.COOP key fails and suggests the real one."""
    with pytest.raises(ConfigError, match="TRAINER.COOP.N_CTX"):
        _cfg(data_root, str(tmp_path), "TRAINER.COOP.NCTX", "4")
