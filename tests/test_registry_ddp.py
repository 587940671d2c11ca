"""Every registered trainer as 2 ranks of a gloo process group on the CPU equals its single-process run.

The ranks are forked from the test process with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)
so nothing is imported twice; tests/test_ddp.py runs the real ``torchrun`` launcher once.

Learned parameters of every checkpoint within 1e-6 (float sums over two half batches round differently from
one sum over the batch), the same test metric, and rank 0 alone writes: one log.txt, one tensorboard event
file and the same set of checkpoint files.
"""
from __future__ import annotations

import glob
import os.path as osp

import pytest
import torch

from helpers import last_accuracy, run_forked
from registry_specs import argv_for, checkpoint_files, reference_run, registered_trainers, shared_data_root, \
    spec_for


def _supports_torchrun(name: str) -> bool:
    from dassl.engine import TRAINER_REGISTRY

    return getattr(TRAINER_REGISTRY.get(name), "SUPPORTS_DISTRIBUTED", True)


def _params():
    return [pytest.param(name, marks=[] if _supports_torchrun(name) else pytest.mark.xfail(
        reason="not yet checked under torchrun", strict=True)) for name in registered_trainers()]


@pytest.mark.parametrize("name", _params())
def test_two_processes_equal_one(name, shared_dir, tmp_path):
    spec = spec_for(name)
    single = reference_run(name, shared_dir)
    ddp = str(tmp_path / "ddp")
    assert run_forked(argv_for(name, shared_data_root(shared_dir), ddp), nproc=2) == [0, 0]

    assert [osp.basename(p) for p in glob.glob(osp.join(ddp, "log.txt*"))] == ["log.txt"]
    events = [len(glob.glob(osp.join(run, "tensorboard", "events.out.tfevents.*"))) for run in (single, ddp)]
    assert events[1] == events[0] == (1 if spec.learns else events[0]) <= 1, events
    assert checkpoint_files(ddp) == checkpoint_files(single)
    for rel in checkpoint_files(single):
        a = torch.load(osp.join(single, rel), map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(osp.join(ddp, rel), map_location="cpu", weights_only=True)["state_dict"]
        assert a.keys() == b.keys(), rel
        for key in a:
            if a[key].is_floating_point():
                diff = (a[key] - b[key]).abs().max().item()
                assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), (rel, key, diff)
            else:
                assert torch.equal(a[key], b[key]), (rel, key)
    metric = spec.metric
    assert last_accuracy(osp.join(ddp, "log.txt"), metric) == last_accuracy(osp.join(single, "log.txt"), metric)
