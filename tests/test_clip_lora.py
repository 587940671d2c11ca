"""CLIP_LoRA trainer (trainers/clip_lora.py + trainers/common/lora_trainer.py) on the synthetic dataset, CPU.

Checked: CLIP-LoRA beats ZeroshotCLIP on the base classes with the tiny CLIP (random ``tiny-vit``, whose
zero-shot accuracy is at chance); the run lasts exactly ITERS_PER_SHOT x shots iterations with a per-iteration
cosine ending at ETA_MIN; only LoRA tensors train and are checkpointed, and an eval-only run on the novel classes
reloads them; early stopping restores the best epoch (also after a resume) and the literal switch stops one
epoch later; bad settings fail in check_cfg with the key in the message; under torchrun a last batch split 3 + 2
over two ranks still gives the single-process A/B.
"""
from __future__ import annotations

import math
import os
import os.path as osp

import pytest
import torch

from helpers import build, build_cfg, eval_only, train_and_test
from dassl.utils.logger import close_logger
from vlprompt.trainers.clip_lora import CLIP_LoRA

CONFIG = "configs/trainers/CLIP_LoRA/tiny_vit_qkv_r2_a1_iters10_batch8.yaml"
ZS_CONFIG = "configs/trainers/ZeroshotCLIP/tiny_vit.yaml"
BASE = ["DATASET.NUM_SHOTS", "8", "DATASET.SUBSAMPLE_CLASSES", "base"]
ITERS_PER_SHOT = 10


@pytest.fixture(scope="module")
def base_run(data_root, tmp_path_factory):
    """CLIP-LoRA trained on the base classes (5 classes x 8 shots, batch 8: 5 batches per epoch, 80 iterations)."""
    out = str(tmp_path_factory.mktemp("clip_lora") / "base")
    cfg = build_cfg("CLIP_LoRA", CONFIG, out, data_root, opts=BASE, backbone="tiny-vit")
    trainer, accuracy = train_and_test(cfg)
    return {"trainer": trainer, "accuracy": accuracy, "out": out, "cfg": cfg}


def test_beats_zero_shot_on_base_classes(base_run, data_root, tmp_path):
    cfg = build_cfg("ZeroshotCLIP", ZS_CONFIG, str(tmp_path / "zs"), data_root, opts=BASE, backbone="tiny-vit")
    _, zero_shot = train_and_test(cfg)
    assert base_run["accuracy"] >= zero_shot + 15, (base_run["accuracy"], zero_shot)


def test_iteration_budget_and_per_iteration_cosine(base_run):
    """8 shots x 10 = 80 iterations = 16 epochs of 5 batches; the LR after step t is the cosine to 1e-6."""
    trainer = base_run["trainer"]
    total = ITERS_PER_SHOT * 8
    per_epoch = len(trainer.train_loader_x.loader)
    assert trainer.total_iters == total and trainer.max_epoch == math.ceil(total / per_epoch) == 16
    scheduler = trainer._scheds["lora"]
    assert scheduler.last_epoch == total  # stepped once per iteration
    lr, eta_min = trainer.cfg.OPTIM.LR, trainer.cfg.TRAINER.CLIP_LORA.ETA_MIN
    assert trainer.get_current_lr() == pytest.approx(eta_min)
    scheduler.last_epoch = 20
    expected = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * 20 / total)) / 2
    assert scheduler._get_closed_form_lr()[0] == pytest.approx(expected)
    scheduler.last_epoch = total


def test_only_lora_trains_and_is_checkpointed(base_run):
    trainer = base_run["trainer"]
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("lora.") and "w_lora_" in n for n in trainable)
    checkpoint = torch.load(osp.join(base_run["out"], "lora", "model.pth.tar-16"), weights_only=True)
    keys = list(checkpoint["state_dict"])
    assert keys == list(model.lora.state_dict())
    assert all(k.split(".")[0].startswith("layer_") and k.split(".")[-1] in ("w_lora_A", "w_lora_B") for k in keys)
    assert sum(t.numel() for t in checkpoint["state_dict"].values()) == sum(p.numel() for p in model.lora.parameters())
    lora_file = torch.load(osp.join(base_run["out"], "lora_weights.pt"), weights_only=True)
    assert lora_file["metadata"]["backbone"] == "tiny-vit" and lora_file["metadata"]["r"] == 2


def test_eval_only_on_novel_classes_reloads_lora(base_run, data_root, tmp_path):
    close_logger()
    cfg = build_cfg("CLIP_LoRA", CONFIG, str(tmp_path / "new"), data_root, backbone="tiny-vit",
                    opts=["DATASET.NUM_SHOTS", "8", "DATASET.SUBSAMPLE_CLASSES", "new"])
    trainer, accuracy = eval_only(cfg, base_run["out"], load_epoch=16)
    trained = base_run["trainer"].model.lora.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in trainer.model.lora.state_dict().items())
    assert trainer.dm.dataset.classnames != base_run["trainer"].dm.dataset.classnames
    assert 0 <= accuracy <= 100


VALS = [50.0, 60.0, 55.0, 54.0, 53.0, 99.0, 99.0, 99.0]


def _scripted_val(monkeypatch, snapshots: dict) -> None:
    """Validation accuracies come from VALS; the A/B tensors at each validation are recorded."""
    values = iter(VALS)
    original = CLIP_LoRA.test

    def test(self, split=None):
        if split == "val":
            snapshots[self.epoch] = {k: v.clone() for k, v in self.model.lora.state_dict().items()}
            return next(values)
        return original(self, split)

    monkeypatch.setattr(CLIP_LoRA, "test", test)


@pytest.mark.parametrize("literal, last_epoch", [(False, 3), (True, 4)])
def test_early_stopping_restores_best_epoch(data_root, tmp_path, monkeypatch, literal, last_epoch):
    """Patience 2: best val at epoch index 1; stop after 2 (literal: 3) worse epochs; deploy epoch 1's A/B."""
    snapshots: dict = {}
    _scripted_val(monkeypatch, snapshots)
    opts = BASE + ["TEST.FINAL_MODEL", "best_val", "TRAINER.CLIP_LORA.PATIENCE", "2", "OPTIM.MAX_EPOCH", "8",
                   "TRAINER.CLIP_LORA.ITERS_PER_SHOT", "0", "TRAINER.CLIP_LORA.PATIENCE_LITERAL", str(literal)]
    out = str(tmp_path / "es")
    trainer = build(build_cfg("CLIP_LoRA", CONFIG, out, data_root, opts=opts, backbone="tiny-vit"))
    trainer.train()
    assert sorted(snapshots) == list(range(last_epoch + 1))
    deployed = trainer.model.lora.state_dict()
    assert all(torch.equal(deployed[k], v) for k, v in snapshots[1].items())
    assert not all(torch.equal(deployed[k], v) for k, v in snapshots[last_epoch].items())
    close_logger()
    # A re-run into the same folder resumes, sees the stop and only deploys + tests (no epoch, no validation).
    snapshots.clear()
    resumed = build(build_cfg("CLIP_LoRA", CONFIG, out, data_root, opts=opts, backbone="tiny-vit"))
    monkeypatch.setattr(CLIP_LoRA, "run_epoch", lambda self: pytest.fail("trained again after early stopping"))
    resumed.train()
    assert snapshots == {}
    assert all(torch.equal(resumed.model.lora.state_dict()[k], v) for k, v in deployed.items())
    close_logger()


@pytest.mark.parametrize("opts, match", [
    (["TRAINER.CLIP_LORA.PREC", "fp16"], "TRAINER.CLIP_LORA.PREC"),
    (["DATASET.NUM_SHOTS", "-1"], "ITERS_PER_SHOT"),
    (["TRAINER.CLIP_LORA.PATIENCE", "3"], "TEST.FINAL_MODEL best_val"),
    (["TRAINER.CLIP_LORA.PARAMS", "['q', 'x']"], "TRAINER.CLIP_LORA.PARAMS"),
    (["TRAINER.CLIP_LORA.TEMPLATE", "a photo"], "TRAINER.CLIP_LORA.TEMPLATE"),
    (["TRAINER.CLIP_LORA.LR_STEP", "epoch"], "ITERS_PER_SHOT 0"),
])
def test_check_cfg_errors(data_root, tmp_path, opts, match):
    cfg = build_cfg("CLIP_LoRA", CONFIG, str(tmp_path / "bad"), data_root, opts=BASE + opts, backbone="tiny-vit")
    with pytest.raises(ValueError, match=match):
        build(cfg)


def test_resume_after_kill_is_bit_identical(base_run, data_root, tmp_path, monkeypatch):
    """Killed after epoch 6 of 16 (mid-budget), re-run into the same folder: the same A/B as uninterrupted."""
    out = str(tmp_path / "killed")
    opts = BASE + ["TRAIN.CHECKPOINT_FREQ", "1"]
    original = CLIP_LoRA.after_epoch

    def after_epoch(self):
        original(self)
        if self.epoch == 5:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(CLIP_LoRA, "after_epoch", after_epoch)
    with pytest.raises(KeyboardInterrupt):
        build(build_cfg("CLIP_LoRA", CONFIG, out, data_root, opts=opts, backbone="tiny-vit")).train()
    close_logger()
    monkeypatch.setattr(CLIP_LoRA, "after_epoch", original)
    resumed = build(build_cfg("CLIP_LoRA", CONFIG, out, data_root, opts=opts, backbone="tiny-vit"))
    resumed.train()
    assert resumed.start_epoch == 6
    expected = base_run["trainer"].model.lora.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in resumed.model.lora.state_dict().items())
    assert resumed._scheds["lora"].last_epoch == ITERS_PER_SHOT * 8
    close_logger()


def test_torchrun_uneven_last_batch_equals_single_process(data_root, tmp_path):
    """1 shot x 5 base classes with batch 8: each epoch is one partial batch split 3 + 2 over two ranks; the loss
    is still the mean over the 5 images (lora checkpoints equal within 1e-6; SGD, dropout and flips off)."""
    from helpers import run_forked, run_train, train_argv

    opts = ["DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.CLIP_LORA.ITERS_PER_SHOT", "0",
            "OPTIM.MAX_EPOCH", "3", "OPTIM.NAME", "sgd", "OPTIM.LR", "0.05", "TRAINER.CLIP_LORA.DROPOUT", "0.0",
            "INPUT.TRANSFORMS", "['normalize']", "TEST.FEATURE_CACHE.ENABLED", "False"]
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert run_train(train_argv("CLIP_LoRA", CONFIG, data_root, single, backbone="tiny-vit", opts=opts)) == 0
    argv = train_argv("CLIP_LoRA", CONFIG, data_root, ddp, backbone="tiny-vit", opts=opts)
    assert run_forked(argv, nproc=2) == [0, 0]  # two gloo ranks forked from this process
    a = torch.load(osp.join(single, "lora", "model.pth.tar-3"), weights_only=True)
    b = torch.load(osp.join(ddp, "lora", "model.pth.tar-3"), weights_only=True)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 3  # one step per epoch on both ranks
    for key, value in a["state_dict"].items():
        diff = (value - b["state_dict"][key]).abs().max()
        assert torch.allclose(value, b["state_dict"][key], atol=1e-6, rtol=1e-5), (key, diff)
    assert torch.load(osp.join(ddp, "lora_weights.pt"), weights_only=True)["metadata"]["trainer"] == "CLIP_LoRA"
    assert sorted(f for f in os.listdir(ddp) if f.startswith("log")) == ["log.txt"]
