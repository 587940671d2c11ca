"""Fault injection over every registered trainer: a run killed with SIGKILL, or left with a corrupt newest
checkpoint, is resumed by running the same command again and ends with the uninterrupted run's weights
(``torch.equal``) and test metric.

Kill points (tests/fault_runner.py): inside the save of the last epoch's checkpoint set (nothing committed),
half-way through committing it (one model's file in place), and before the first checkpoint.  A newest
checkpoint truncated on disk is skipped for the epoch before it (logged).  A new trainer is covered the day it
is registered (run settings: tests/registry_specs.py).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import shutil
import signal

import pytest
import torch

from fault_runner import install
from helpers import last_accuracy, run_forked, run_train
from registry_specs import EPOCHS, argv_for, checkpoint_files, reference_run, registered_trainers, \
    shared_data_root, spec_for

LAST = f"model.pth.tar-{EPOCHS}"
LEARNING = [name for name in registered_trainers() if spec_for(name).learns]


def _kill_at(point: str, argv) -> None:
    """Train in a forked child that SIGKILLs itself at ``point`` (see tests/fault_runner.py)."""
    assert run_forked(argv, before=lambda rank: install(point)) == [-signal.SIGKILL]


def _newest_log(run: str) -> str:
    """The resumed run's log: a re-run into a folder with a log.txt writes log.txt-<time>."""
    return max(glob.glob(osp.join(run, "log.txt*")), key=osp.getmtime)


def _assert_same_result(run: str, reference: str, metric: str) -> None:
    assert checkpoint_files(run) == checkpoint_files(reference)
    for rel in checkpoint_files(reference):
        a = torch.load(osp.join(reference, rel), map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(osp.join(run, rel), map_location="cpu", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert last_accuracy(_newest_log(run), metric) == last_accuracy(osp.join(reference, "log.txt"), metric)
    leftovers = glob.glob(osp.join(run, "*", "*.pending")) + glob.glob(osp.join(run, "*", "*.tmp*"))
    assert not leftovers and not osp.exists(osp.join(run, "checkpoint-commit.json")), leftovers


@pytest.mark.parametrize("point", [f"save:{LAST}", f"rename:{LAST}", "epoch:1"])
@pytest.mark.parametrize("name", LEARNING)
def test_killed_run_resumes_to_the_uninterrupted_result(name, point, shared_dir, tmp_path):
    reference = reference_run(name, shared_dir)
    out = str(tmp_path / "run")
    argv = argv_for(name, shared_data_root(shared_dir), out)
    _kill_at(point, argv)
    if point.startswith("rename"):
        assert osp.exists(osp.join(out, "checkpoint-commit.json"))  # the kill left a half-committed set
    assert run_train(argv) == 0
    _assert_same_result(out, reference, spec_for(name).metric)


@pytest.mark.parametrize("name", LEARNING)
def test_truncated_newest_checkpoint_falls_back_to_the_epoch_before(name, shared_dir, tmp_path, caplog):
    reference = reference_run(name, shared_dir)
    out = str(tmp_path / "run")
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("log.txt*", "tensorboard", "DONE", "*.lock"))
    victim = sorted(glob.glob(osp.join(out, "*", LAST)))[-1]
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    for best in glob.glob(osp.join(out, "*", "model-best.pth.tar")):  # best-val runs: the best of epoch <= 1 only
        if torch.load(best, weights_only=True)["epoch"] == EPOCHS:
            os.remove(best)
    assert run_train(argv_for(name, shared_data_root(shared_dir), out)) == 0
    log = open(_newest_log(out)).read()
    assert f"{victim} is unreadable" in log and f"falling back to epoch {EPOCHS - 1}" in log
    _assert_same_result(out, reference, spec_for(name).metric)
