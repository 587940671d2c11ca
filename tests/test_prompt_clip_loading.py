"""trainers.common.clip_loading and clip/pretrain_tiny.py: backbone names, precision casts, pre-trained tiny CLIP."""
from __future__ import annotations

import logging
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from vlprompt import clip
from vlprompt.clip.pretrain_tiny import PretrainConfig, contrastive_loss, pretrain_tiny_clip, save_state_dict
from vlprompt.trainers.common.clip_loading import (BackboneNotFoundError, cast_clip, load_clip_to_cpu, pretrained_tiny_path,
                                          resolve_backbone, resolve_precision)


def test_pretraining_is_deterministic_and_clip_load_reproduces_it(tmp_path, monkeypatch):
    """Same seed -> bit-identical weights; the saved file loads by registered name with the same values."""
    first, metrics = pretrain_tiny_clip(PretrainConfig(steps=3))
    second, _ = pretrain_tiny_clip(PretrainConfig(steps=3))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert metrics["final_loss"] < 2 * torch.log(torch.tensor(48.0)).item()
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", str(tmp_path))
    path = pretrained_tiny_path("tiny-vit-synthetic")
    save_state_dict(first, path)
    assert resolve_backbone("tiny-vit-synthetic") == path
    loaded = load_clip_to_cpu("tiny-vit-synthetic").state_dict()
    assert all(torch.equal(loaded[k], first[k]) for k in first)
    assert not torch.equal(first["text_projection"], clip.load("tiny-vit", device="cpu")[0].text_projection)


def test_missing_pretrained_file_names_the_script(tmp_path, monkeypatch):
    """A registered but absent pre-trained file, or an unknown name, fails with the fix in the message."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(BackboneNotFoundError, match="scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic"):
        resolve_backbone("tiny-vit-synthetic")
    with pytest.raises(BackboneNotFoundError, match="ViT-B/16"):  # the message lists the known names
        resolve_backbone("ViT-B/61")
    assert resolve_backbone("RN50") == "RN50"  # OpenAI names pass through (no download here)


def test_contrastive_loss_is_clip_s_symmetric_cross_entropy():
    """(CE(image->text) + CE(text->image)) / 2 on exp(scale)-scaled cosine similarities."""
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    scale = torch.tensor(2.0)
    logits = scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    target = torch.arange(6)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(contrastive_loss(image, text, scale), expected)


def test_precision_resolution_and_casts(caplog):
    """fp16/amp fall back to fp32 on a CPU with a warning; the fp16 cast follows OpenAI's recipe."""
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("fp16", "cpu") == "fp32"
        assert resolve_precision("amp", "cpu") == "fp32"
    assert sum("needs a CUDA device" in r.getMessage() for r in caplog.records) == 2
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="bf32"):
        resolve_precision("bf32", "cpu")
    model = load_clip_to_cpu("tiny-vit")
    assert model.dtype == torch.float32 and not model.training
    cast_clip(model, "fp16")  # OpenAI's recipe: conv/linear/projections half, LayerNorm and embeddings fp32
    assert model.dtype == torch.float16 and model.text_projection.dtype == torch.float16
    assert model.ln_final.weight.dtype == torch.float32 and model.token_embedding.weight.dtype == torch.float32
    assert cast_clip(model, "amp").dtype == torch.float32


def test_pretrain_script_skips_an_existing_file(tmp_path):
    """scripts/pretrain_tiny_clip.py leaves an existing file untouched (skip-if-done)."""
    import subprocess
    import sys

    target = tmp_path / "tiny.pth"
    target.write_bytes(b"keep me")
    script = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "scripts", "pretrain_tiny_clip.py")
    result = subprocess.run([sys.executable, script, "--output", str(target)], capture_output=True, text=True)
    assert result.returncode == 0 and "skipping" in result.stderr + result.stdout
    assert target.read_bytes() == b"keep me"
