"""ZeroshotCLIP / ZeroshotCLIP2 (trainers/zsclip.py): text features and logits recomputed with CLIP.encode_text.

As KaiyangZhou/CoOp@ff61507 ``trainers/zsclip.py``: one template per dataset, or the 7 ImageNet templates + the
dataset's own, averaged after per-template L2 normalisation and normalised again; logits
``exp(logit_scale) * norm(img) @ text^T``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt import clip
from helpers import build, build_cfg, tiny_clip_fp32
from vlprompt.trainers.common.text_features import class_text_features
from vlprompt.trainers.common.templates import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_SELECT, dataset_template

TINY_ZS = "configs/trainers/ZeroshotCLIP/tiny_vit.yaml"


def _encode(texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(tiny_clip_fp32().encode_text(clip.tokenize(texts)), dim=-1)


def _trainer(name: str, root: str, out: str):
    return build(build_cfg(name, TINY_ZS, out, root, backbone="tiny-vit", opts=["DATASET.NUM_SHOTS", "16"]))


def test_zeroshot_clip_logits_use_the_dataset_template(data_root, tmp_path):
    """Text features = encode_text("a photo of a {name}."), logits = 100 * norm(img) @ text^T; nothing registered."""
    trainer = _trainer("ZeroshotCLIP", data_root, str(tmp_path))
    names = trainer.dm.dataset.classnames
    expected_text = _encode([f"a photo of a {name}." for name in names])  # Synthetic's template
    torch.testing.assert_close(trainer.model.text_features, expected_text, rtol=0, atol=1e-6)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = trainer.model_inference(images)
        image = F.normalize(tiny_clip_fp32().encode_image(images), dim=-1)
    torch.testing.assert_close(logits, 100.0 * image @ expected_text.t(), rtol=1e-5, atol=1e-5)
    assert trainer.get_model_names() == []  # nothing registered, nothing saved
    trainer.load_model("")  # --eval-only with no --model-dir is a no-op


def test_zeroshot_clip2_averages_eight_templates(data_root, tmp_path):
    """7 ImageNet templates + the dataset's: normalise each, average, normalise again."""
    trainer = _trainer("ZeroshotCLIP2", data_root, str(tmp_path))
    names = trainer.dm.dataset.classnames
    templates = list(IMAGENET_TEMPLATES_SELECT) + ["a photo of a {}."]
    mean = torch.stack([_encode([t.format(n) for n in names]) for t in templates]).mean(dim=0)
    torch.testing.assert_close(trainer.model.text_features, F.normalize(mean, dim=-1), rtol=0, atol=1e-6)
    assert len(IMAGENET_TEMPLATES_SELECT) == 7  # unchanged (CoOp's ZeroshotCLIP2 appended to it in place)


def test_class_text_features_match_encode_text_without_truncation():
    """The shared helper with truncation off is CLIP.encode_text on the filled-in template."""
    names = ["red circle", "dog"]
    features = class_text_features(tiny_clip_fp32(), names, ["{} texture."], truncate_at_eot=False)
    torch.testing.assert_close(features, _encode(["red circle texture.", "dog texture."]), rtol=0, atol=1e-6)


def test_train_without_parameters_runs_the_final_test(data_root, tmp_path, caplog):
    """base2new_train.sh works with TRAINER=ZeroshotCLIP: train() logs the end marker and tests."""
    trainer = _trainer("ZeroshotCLIP", data_root, str(tmp_path))
    with caplog.at_level("INFO"):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records]
    assert "Finish training" in messages and any("* accuracy:" in m for m in messages)


def test_templates_are_coop_s():
    """The template tables hold CoOp's strings (spot checks) and all 15 CoOp datasets."""
    assert len(IMAGENET_TEMPLATES) == 80 and IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert dataset_template("DescribableTextures") == "{} texture."
    assert dataset_template("EuroSAT") == "a centered satellite photo of {}."
    assert dataset_template("UCF101") == "a photo of a person doing {}."
    assert dataset_template("OxfordPets") == "a photo of a {}, a type of pet."
    assert dataset_template("CIFAR10LT") == "a photo of a {}."  # no TEMPLATE: the default
