"""LangevinCoOp under torchrun (2 CPU processes, gloo) against one process, on the synthetic CIFAR-10-LT copy.

Deterministic transforms, Langevin noise from epoch 3 on, a bank of 3 samples and an uneven last batch (95
training images at batch 32: the last 31 split 16 / 15): the final prompt and every bank sample equal the
single-process run's within 1e-6 (same noise on every rank, gradient of the global-batch mean), the one-model
and hard-vote accuracies are the same, and only rank 0 writes (one log, one event file, one set of files).
"""
from __future__ import annotations

import os
import os.path as osp

import torch

from helpers import last_accuracy, run_forked
from langevin_helpers import run_train, train_args, write_shape_cifar10

EPOCHS, BURN_IN, K = 5, 2, 3
OPTS = ["TRAINER.LANGEVINCOOP.AUGMENT", "dassl", "INPUT.TRANSFORMS", "['normalize']",
        "OPTIM.MAX_EPOCH", str(EPOCHS), "OPTIM.STEPSIZE", "(3,)", "TRAIN.CHECKPOINT_FREQ", "2",
        "TRAINER.LANGEVINCOOP.BURN_IN", str(BURN_IN), "TRAINER.LANGEVINCOOP.MAX_SAMPLES", str(K),
        "TRAINER.LANGEVINCOOP.EVAL_FREQ", "2", "TRAINER.LANGEVINCOOP.PROMPT_SAVE_FREQ", "2",
        "DATASET.IMB_RATIO", "0.3"]  # class counts 40 / 26 / 17 / 12 = 95 images


def _state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_two_processes_equal_one(tmp_path):
    root = str(tmp_path / "data")
    write_shape_cifar10(root)
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert run_train(train_args(root, single, phase=2, opts=OPTS)) == 0
    assert run_forked(train_args(root, ddp, phase=2, opts=OPTS), nproc=2) == [0, 0]

    assert "95 training images" in open(osp.join(single, "log.txt")).read()
    final = f"prompt_learner/model.pth.tar-{EPOCHS}"
    samples = [f"sample_bank/sample_epoch_{e:05d}.pth" for e in range(EPOCHS - K, EPOCHS)]
    for name in [final, *samples, "saved_prompts/prompt_epoch_2.pth", "saved_prompts/prompt_epoch_4.pth"]:
        a, b = _state(osp.join(single, name))["ctx"], _state(osp.join(ddp, name))["ctx"]
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (name, (a - b).abs().max().item())
    # The noise is on: consecutive samples differ by much more than the tolerance.
    first, second = (_state(osp.join(single, s))["ctx"] for s in samples[:2])
    assert (first - second).abs().max() > 1e-3

    assert sorted(f for f in os.listdir(ddp) if f.startswith("log")) == ["log.txt"]
    assert len(os.listdir(osp.join(ddp, "tensorboard"))) == 1
    for folder in ("sample_bank", "saved_prompts", "prompt_learner"):
        assert sorted(os.listdir(osp.join(ddp, folder))) == sorted(os.listdir(osp.join(single, folder))), folder
    log = open(osp.join(ddp, "log.txt")).read()
    assert "* total: 40\n" in log and f"=> ensemble result ({K} samples" in log
    for keyword in ("accuracy", "hard_vote_accuracy", "few_accuracy"):
        assert last_accuracy(osp.join(ddp, "log.txt"), keyword) == last_accuracy(osp.join(single, "log.txt"), keyword)
