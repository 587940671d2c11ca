"""CLIP_Adapter (trainers/clip_adapter.py) against gaopengcuhk/CLIP-Adapter@08d07f8 clip_adapter.py.

- Logits = exp(logit_scale) norm(0.2 A(f) + 0.8 f) @ norm(W)^T with A = ReLU(ReLU(f W1^T) W2^T), recomputed here
  from the weights on the tower's raw output, as the reference computes them.
- The adapter runs on the L2-normalised features that the feature cache keeps: A has no biases and ReLU is
  positively homogeneous, so logits and adapter gradients equal those of the raw features.
- The registered model and its state-dict keys are the reference's (``clip_adapter``: ``fc.0.weight``,
  ``fc.2.weight``), so reference checkpoints load.
- On the Synthetic base classes with the pre-trained tiny CLIP it beats zero-shot CLIP, and ``--eval-only`` on
  its checkpoint gives the same accuracy.
"""
from __future__ import annotations

import os.path as osp

import torch
import torch.nn.functional as F

from helpers import build, build_cfg, eval_only, last_accuracy, run_train, tiny_clip_fp32, train_argv
from vlprompt.clip import tokenize

CONFIG = "configs/trainers/CLIP_Adapter/tiny_vit_ep50.yaml"
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


def _trainer(root: str, out: str, ratio: float = 0.2):
    opts = ["DATASET.NUM_SHOTS", "4", "TRAINER.CLIP_ADAPTER.RATIO", str(ratio)]
    trainer = build(build_cfg("CLIP_Adapter", CONFIG, out, root, backbone="tiny-vit", opts=opts))
    with torch.no_grad():  # a non-trivial adapter (the init is random already; make it larger)
        for param in trainer.model.clip_adapter.parameters():
            param.mul_(3.0)
    return trainer


def test_logits_equal_the_reference_formula_on_raw_features(data_root, tmp_path):
    """The model's images -> logits equals the reference's computation on the tower's raw output."""
    trainer = _trainer(data_root, str(tmp_path), ratio=0.3)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    w1, w2 = (trainer.model.clip_adapter.fc[i].weight.detach() for i in (0, 2))
    assert w1.shape == (16, 64) and w2.shape == (64, 16)  # E = 64, reduction 4, no biases
    clip = tiny_clip_fp32()
    with torch.no_grad():
        raw = clip.encode_image(images)  # (6, E), not normalised
        prompts = [f"a photo of a {name}." for name in trainer.dm.dataset.classnames]  # Synthetic's template
        text = F.normalize(clip.encode_text(tokenize(prompts)), dim=-1)
        mixed = 0.3 * F.relu(F.relu(raw @ w1.t()) @ w2.t()) + 0.7 * raw
        expected = clip.logit_scale.exp() * F.normalize(mixed, dim=-1) @ text.t()
        logits = trainer.model_inference(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert trainer.get_model_names() == ["clip_adapter"]
    assert sorted(trainer.model.clip_adapter.state_dict()) == ["fc.0.weight", "fc.2.weight"]


def test_normalised_features_give_the_raw_features_logits_and_gradients(data_root, tmp_path):
    """Blend, logits and adapter gradients do not depend on the feature norm (what makes cached features exact)."""
    trainer = _trainer(data_root, str(tmp_path))
    model = trainer.model
    raw = 7.0 * torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    label = torch.arange(8) % model.text_features.shape[0]
    grads, logits = [], []
    for features in (raw, F.normalize(raw, dim=-1)):
        model.zero_grad()
        out = model.logits_from_image_features(features)
        F.cross_entropy(out, label).backward()
        logits.append(out.detach())
        grads.append([p.grad.clone() for p in model.clip_adapter.parameters()])
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    for g_raw, g_norm in zip(*grads):
        assert g_raw.abs().max() > 0
        torch.testing.assert_close(g_raw, g_norm, rtol=1e-4, atol=1e-6)


def test_beats_zero_shot_and_eval_only_reloads(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    """16 shots of the 5 base classes: above zero-shot CLIP; --eval-only on the last checkpoint gives the same."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    run = str(tmp_path / "run")
    assert run_train(train_argv("CLIP_Adapter", CONFIG, data_root, run, opts=BASE)) == 0
    trained = last_accuracy(osp.join(run, "log.txt"))
    assert trained > zero_shot + 5, f"CLIP-Adapter {trained:.1f}% vs zero-shot {zero_shot:.1f}%"

    out = str(tmp_path / "eval")
    argv = train_argv("CLIP_Adapter", CONFIG, data_root, out, opts=BASE,
                      extra=["--eval-only", "--model-dir", run, "--load-epoch", "50"])
    assert run_train(argv) == 0
    assert last_accuracy(osp.join(out, "log.txt")) == trained
