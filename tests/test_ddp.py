"""The real ``torchrun`` launcher (gloo on CPU, 2 processes), and the feature cache under torchrun.

Each rank takes its slice of the single-process global batches (with per-item augmentation seeds, so the
slices are transformed exactly as one process would), gradients are averaged, only rank 0 writes, and test
metrics are computed over the whole split gathered from both ranks.  Every trainer is compared with its
single-process run in tests/test_registry_ddp.py (ranks forked from the test process); this file runs the
launcher itself once.
"""
from __future__ import annotations

import os
import os.path as osp
import re

import torch

from helpers import last_accuracy, run_forked, run_torchrun
from registry_specs import argv_for, reference_run, shared_data_root


def test_torchrun_launcher_equals_single_process(shared_dir, tmp_path):
    single = reference_run("CoOp", shared_dir)
    ddp = str(tmp_path / "ddp")
    proc = run_torchrun(argv_for("CoOp", shared_data_root(shared_dir), ddp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for epoch in (1, 2):
        rel = osp.join("prompt_learner", f"model.pth.tar-{epoch}")
        a = torch.load(osp.join(single, rel), weights_only=True)["state_dict"]["ctx"]
        b = torch.load(osp.join(ddp, rel), weights_only=True)["state_dict"]["ctx"]
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (epoch, (a - b).abs().max().item())
    assert sorted(f for f in os.listdir(ddp) if f.startswith("log")) == ["log.txt"]
    log = open(osp.join(ddp, "log.txt")).read()
    assert re.search(r"\* total: 120\n", log)  # the whole test split, gathered from both ranks
    assert last_accuracy(osp.join(ddp, "log.txt")) == last_accuracy(osp.join(single, "log.txt"))


def test_feature_cache_under_torchrun_encodes_once(shared_dir, tmp_path, monkeypatch):
    """Ranks encode their blocks of the split, rank 0 writes the entry; a second evaluation encodes nothing."""
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    model_dir = reference_run("CoOp", shared_dir)
    flags = ["--eval-only", "--model-dir", model_dir, "--load-epoch", "2"]
    logs = []
    for attempt in ("first", "second"):
        out = str(tmp_path / attempt)
        argv = argv_for("CoOp", shared_data_root(shared_dir), out, extra_flags=flags,
                        extra_opts=["TEST.FEATURE_CACHE.ENABLED", "True"])
        assert run_forked(argv, nproc=2) == [0, 0]
        logs.append(open(osp.join(out, "log.txt")).read())
    assert "Feature cache miss: encoded 120 images" in logs[0]
    assert "Feature cache hit" in logs[1] and "Feature cache miss" not in logs[1]
    result = [log[log.rindex("=> result"):] for log in logs]
    assert result[0] == result[1]  # identical predictions: every count and metric line
    assert len(os.listdir(tmp_path / "cache" / "features")) == 1  # one entry, written once
    assert last_accuracy(osp.join(str(tmp_path / "second"), "log.txt")) == last_accuracy(
        osp.join(model_dir, "log.txt"))


def test_unverified_trainer_refuses_torchrun(data_root, tmp_path, monkeypatch, capsys):
    """A trainer that declares SUPPORTS_DISTRIBUTED = False fails with one line instead of training wrongly."""
    from dassl.engine import TRAINER_REGISTRY
    from dassl.engine import trainer as trainer_module
    from helpers import toy_args

    monkeypatch.setattr(trainer_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(TRAINER_REGISTRY.get("Vanilla"), "SUPPORTS_DISTRIBUTED", False)
    from helpers import run_train

    assert run_train(toy_args(data_root, str(tmp_path / "out"))) == 1
    assert "Vanilla has not been verified under torchrun" in capsys.readouterr().err
