"""TaskRes (the worked example of docs/write-your-own-method.md): the classifier t0 + alpha * x recomputed from
CLIP's own ``encode_text``, a reference-layout checkpoint loads, and training beats zero-shot CLIP.

The registry tests (smoke, torchrun, kill-and-resume) pick TaskRes up through its tiny config.
"""
from __future__ import annotations

import torch

from helpers import build, build_cfg, eval_only, train_and_test
from vlprompt import clip

TINY = "configs/trainers/TaskRes/tiny_vit_adam_ep10.yaml"
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


def _trainer(data_root, out, alpha="1.0"):
    return build(build_cfg("TaskRes", TINY, out, data_root, backbone="tiny-vit",
                           opts=["TRAINER.TASKRES.RESIDUAL_SCALE", alpha]))


def test_logits_are_the_residual_classifier_formula(data_root, tmp_path):
    trainer = _trainer(data_root, str(tmp_path / "out"), alpha="0.5")
    model = trainer.model
    names = [n.replace("_", " ") for n in trainer.dm.dataset.classnames]
    with torch.no_grad():
        # t0 from CLIP's own text path: the dataset's one template, features not normalised
        tokens = clip.tokenize([f"a photo of a {n}." for n in names])
        clip_model = clip.load("tiny-vit", device="cpu")[0]
        t0 = clip_model.encode_text(tokens).float()  # (n_cls, E)
        assert torch.allclose(model.prompt_learner.base_text_features, t0, atol=1e-5)

        x = torch.randn_like(t0)
        model.prompt_learner.text_feature_residuals.copy_(x)
        images = torch.randn(3, 3, 32, 32)
        f = clip_model.encode_image(images).float()
        f = f / f.norm(dim=-1, keepdim=True)
        w = t0 + 0.5 * x
        w = w / w.norm(dim=-1, keepdim=True)
        expected = clip_model.logit_scale.exp() * f @ w.t()
        assert torch.allclose(model(images), expected, atol=1e-4)


def test_a_reference_layout_checkpoint_loads(data_root, tmp_path):
    trainer = _trainer(data_root, str(tmp_path / "out"))
    learner = trainer.model.prompt_learner
    residual = torch.randn_like(learner.text_feature_residuals)
    folder = tmp_path / "ref" / "prompt_learner"
    folder.mkdir(parents=True)
    # The reference checkpoints its buffer t0 too; ours rebuilds t0 for the current classes and loads x.
    state = {"base_text_features": torch.randn_like(residual), "text_feature_residuals": residual}
    torch.save({"state_dict": state, "epoch": 3}, folder / "model.pth.tar-3")
    trainer.load_model(str(tmp_path / "ref"), epoch=3)
    assert torch.equal(learner.text_feature_residuals.detach(), residual)
    assert not torch.equal(learner.base_text_features, state["base_text_features"])


def test_taskres_beats_zero_shot_on_base_classes(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    trainer, taskres = train_and_test(build_cfg("TaskRes", TINY, str(tmp_path / "taskres"), data_root, opts=BASE))
    assert taskres > zero_shot, f"TaskRes {taskres:.1f}% <= zero-shot {zero_shot:.1f}%"
    _, reloaded = eval_only(build_cfg("TaskRes", TINY, str(tmp_path / "eval"), data_root, opts=BASE),
                            str(tmp_path / "taskres"), load_epoch=10)
    assert reloaded == taskres
