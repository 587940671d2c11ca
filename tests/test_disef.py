"""DISEF trainer (trainers/disef/trainer.py) and the improved-DISEF class selection, on the synthetic dataset, CPU.

Checked: the loss equals lambda CE(real) + (1 - lambda) CE(synthetic) recomputed here (label smoothing, empty
parts); with lambda = 1 the synthetic half of a batch leaves the LoRA gradient unchanged (and with 0.5 it does
not); the F1 selection returns exactly the classes below the threshold for hand-made predictions, and the trainer
keeps synthetic images only for those classes, with F1s from ZeroshotCLIP's own predictions; training on real +
synthetic images (generated through the real pipeline's manifest) works in the paired and mixed modes.
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from helpers import build, build_cfg, train_and_test
from dassl.data.datasets import build_dataset
from dassl.utils.logger import close_logger
from vlprompt.trainers.disef.config import GenerationConfig
from vlprompt.trainers.disef.manifest import read_manifest
from vlprompt.trainers.disef.models import TemplateCaptioner
from vlprompt.trainers.disef.pipeline import low_f1_classes, run_generation
from vlprompt.trainers.disef.trainer import disef_loss

CONFIG = "configs/trainers/DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8.yaml"
BASE = ["DATASET.NUM_SHOTS", "8", "DATASET.SUBSAMPLE_CLASSES", "base"]


def _smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    log_p = logits.log_softmax(dim=-1)
    nll = -log_p[torch.arange(len(labels)), labels]
    return ((1 - eps) * nll - eps * log_p.mean(dim=-1)).mean()


@pytest.mark.parametrize("lam, eps", [(0.8, 0.0), (0.95, 0.1), (0.3, 0.1)])
def test_loss_is_lambda_weighted_sum(lam, eps):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 5, generator=generator)
    labels = torch.randint(0, 5, (10,), generator=generator)
    synthetic = torch.tensor([False] * 6 + [True] * 4)
    expected = lam * _smoothed_ce(logits[:6], labels[:6], eps) + (1 - lam) * _smoothed_ce(logits[6:], labels[6:], eps)
    assert disef_loss(logits, labels, synthetic, lam, eps).item() == pytest.approx(expected.item(), rel=1e-6)
    all_real = torch.zeros(10, dtype=torch.bool)
    assert disef_loss(logits, labels, all_real, lam, eps).item() == pytest.approx(
        lam * _smoothed_ce(logits, labels, eps).item(), rel=1e-6)  # an empty part contributes nothing


def test_low_f1_classes_hand_made():
    """F1 by hand: class 0 = 2/3, 1 = 0.8, 2 = 0.5, 3 = 0.8, 4 (never seen) = 0."""
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    predictions = [0, 0, 1, 1, 1, 2, 0, 3, 3, 3]
    assert low_f1_classes(labels, predictions, 5, 0.70) == [0, 2, 4]
    assert low_f1_classes(labels, predictions, 5, 0.80) == [0, 2, 4]  # 0.8 is not below 0.8
    assert low_f1_classes(labels, predictions, 5, 0.81) == [0, 1, 2, 3, 4]
    assert low_f1_classes(labels, predictions, 5, 0.5) == [4]


class CopyGenerator:
    """The perfect generator: returns its init images (so synthetic images are real-image look-alikes)."""

    def __call__(self, images, prompts, seeds):
        return [im.copy() for im in images]


@pytest.fixture(scope="module")
def synthetic_dir(data_root, tmp_path_factory):
    """4 synthetic images per base class, written by run_generation (manifest, class folders)."""
    cfg = build_cfg("DISEF", CONFIG, str(tmp_path_factory.mktemp("unused")), data_root, opts=BASE)
    dataset = build_dataset(cfg)
    real = defaultdict(list)
    for datum in dataset.train_x:
        real[datum.label].append(datum.impath)
    root = str(tmp_path_factory.mktemp("disef_syn"))
    run_generation(GenerationConfig(images_per_class=4, batch_size=4, init_size=32), root, dict(real),
                   dataset.classnames, TemplateCaptioner(), CopyGenerator(), None)
    return root


def _trainer(data_root, out, synthetic_dir, opts=()):
    close_logger()
    cfg = build_cfg("DISEF", CONFIG, out, data_root, backbone="tiny-vit",
                    opts=BASE + ["TRAINER.DISEF.SYN_DIR", synthetic_dir] + list(opts))
    return cfg


def _lora_grads(trainer, batch) -> dict[str, torch.Tensor]:
    trainer.model.lora.train()
    trainer.model.lora.zero_grad(set_to_none=True)
    image, label = trainer.parse_batch_train(batch)
    trainer.compute_loss(trainer.forward_train(image, label), label).backward()
    return {n: p.grad.clone() for n, p in trainer.model.lora.named_parameters()}


def test_lambda_one_ignores_synthetic_batch(data_root, tmp_path, synthetic_dir):
    """Same real images with and without a synthetic half: identical LoRA gradients at lambda = 1 only."""
    opts = ["TRAINER.DISEF.DROPOUT", "0.0", "TRAINER.DISEF.LAMBDA", "1.0"]
    trainer = build(_trainer(data_root, str(tmp_path / "g"), synthetic_dir, opts))
    with torch.no_grad():  # a non-zero B, so that the text and image sides both get gradients
        for name, param in trainer.model.lora.named_parameters():
            if name.endswith("w_lora_B"):
                param.normal_(0, 0.05)
    batch = next(iter(trainer.train_loader_x.loader))
    assert batch["syn_img"].shape[0] == batch["img"].shape[0] == 8  # paired: B real + B synthetic
    with_synthetic = _lora_grads(trainer, batch)
    real_only = _lora_grads(trainer, {"img": batch["img"], "label": batch["label"],
                                      "domain": torch.zeros_like(batch["label"])})
    for name, grad in with_synthetic.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, real_only[name], atol=1e-6, rtol=1e-5), (name, (grad - real_only[name]).abs().max())
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.DISEF.LAMBDA = 0.5
    half = _lora_grads(trainer, batch)
    assert any(not torch.allclose(half[n], 0.5 * real_only[n], atol=1e-6) for n in half)


@pytest.mark.parametrize("batching", ["paired-max", "mixed"])
def test_trains_on_real_and_synthetic(data_root, tmp_path, synthetic_dir, batching, caplog):
    """Both batchings run end to end: the synthetic share is logged, the model learns (above the zero-shot)."""
    caplog.set_level("INFO")
    cfg = _trainer(data_root, str(tmp_path / batching), synthetic_dir, ["TRAINER.DISEF.BATCHING", batching])
    trainer, accuracy = train_and_test(cfg)
    loader = trainer.train_loader_x.loader
    n_real, n_syn = len(trainer.dm.dataset.train_x), 4 * 5
    if batching == "paired-max":
        assert len(loader) == max(n_real // 8, n_syn // 8)
    else:
        assert len(loader) == (n_real + n_syn) // 8
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch [")]
    assert progress and all(" syn 0." in line for line in progress)  # the synthetic share of each batch is a meter
    close_logger()
    zs_cfg = build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml", str(tmp_path / "zs"), data_root,
                       opts=BASE, backbone="tiny-vit")
    _, zero_shot = train_and_test(zs_cfg)
    assert accuracy > zero_shot + 10, (accuracy, zero_shot)
    close_logger()


def test_f1_threshold_selects_synthetic_classes(data_root, tmp_path, synthetic_dir):
    """Synthetic images only for classes whose zero-shot val F1 (from ZeroshotCLIP's predictions) is < 0.5."""
    zs_cfg = build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml", str(tmp_path / "zs"), data_root,
                       opts=BASE, backbone="tiny-vit")
    zs = build(zs_cfg)
    zs.set_model_mode("eval")
    labels, predictions = [], []
    with torch.no_grad():
        for batch in zs.val_loader:
            predictions += zs.model_inference(batch["img"]).argmax(dim=-1).tolist()
            labels += batch["label"].tolist()
    expected = low_f1_classes(labels, predictions, zs.num_classes, 0.5)
    assert 0 < len(expected) < zs.num_classes  # the threshold splits the classes
    trainer = build(_trainer(data_root, str(tmp_path / "f1"), synthetic_dir, ["TRAINER.DISEF.F1_THRESHOLD", "0.5"]))
    synthetic_labels = {int(label) for batch in trainer.train_loader_x.loader for label in batch["syn_label"]}
    assert synthetic_labels == set(expected)
    assert len(read_manifest(synthetic_dir)) == 4 * 5  # the generation itself covered every base class
    close_logger()


def test_check_cfg_errors(data_root, tmp_path):
    for opts, match in ((["TRAINER.DISEF.LAMBDA", "1.5"], "LAMBDA"), (["TRAINER.DISEF.BATCHING", "zip"], "BATCHING"),
                        (["TRAINER.DISEF.SYN_DIR", str(tmp_path / "missing")], "SYN_DIR")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            build(build_cfg("DISEF", CONFIG, str(tmp_path / "bad"), data_root, opts=BASE + opts, backbone="tiny-vit"))


def _lora_configs() -> list[tuple[str, str]]:
    import glob
    import os.path as osp

    from helpers import REPO_ROOT

    return [(trainer, osp.relpath(path, REPO_ROOT)) for trainer in ("CLIP_LoRA", "DISEF")
            for path in sorted(glob.glob(osp.join(REPO_ROOT, "configs", "trainers", trainer, "*.yaml")))]


@pytest.mark.parametrize("trainer, path", _lora_configs(), ids=lambda x: x.rsplit("/", 1)[-1])
def test_configs_say_what_their_names_say(trainer, path, tmp_path):
    """Every CLIP_LoRA / DISEF YAML loads; params, ranks, alpha, epochs/iterations, lambda, lr, batch match the name."""
    import re

    cfg = build_cfg(trainer, path, str(tmp_path), str(tmp_path))
    node, name = cfg.TRAINER[trainer.upper()], path.rsplit("/", 1)[-1][:-5]
    backbone, params, ranks, alpha = re.match(r"(tiny_vit|vit_b16)_(qkv|qv)_r([\d-]+)_a(\d+)", name).groups()
    assert cfg.MODEL.BACKBONE.NAME == {"tiny_vit": "tiny-vit-synthetic", "vit_b16": "ViT-B/16"}[backbone]
    assert list(node.PARAMS) == list(params) and node.ALPHA == float(alpha)
    vision_r, text_r = (int(r) for r in (ranks.split("-") * 2)[:2])
    assert (node.VISION_R or node.R, node.TEXT_R or node.R) == (vision_r, text_r)
    if (match := re.search(r"_ep(\d+)", name)):
        assert node.ITERS_PER_SHOT == 0 and cfg.OPTIM.MAX_EPOCH == int(match.group(1))
    if (match := re.search(r"_iters(\d+)", name)):
        assert node.ITERS_PER_SHOT == int(match.group(1))
    if (match := re.search(r"_lam([\d.]+)", name)):
        assert node.LAMBDA == float(match.group(1))
    if (match := re.search(r"_lr([\de.-]+?)_", name)):
        assert cfg.OPTIM.LR == float(match.group(1))
    if (match := re.search(r"_batch(\d+)", name)):
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == int(match.group(1))
    assert (node.PATIENCE == 3 and cfg.TEST.FINAL_MODEL == "best_val") == (name.endswith(("notebook", "_f1"))
                                                                          and backbone == "vit_b16")
    assert (trainer == "DISEF" and node.F1_THRESHOLD == 0.7) == name.endswith("_f1")
    assert cfg.OPTIM.NAME == "adamw"
