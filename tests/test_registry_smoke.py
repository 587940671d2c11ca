"""Every registered trainer, tiny: it trains, writes Dassl's log and a checkpoint per model and epoch, and
``--eval-only`` on the saved checkpoint gives the metric the training run ended with.

A trainer is covered the day it is registered (its run settings: tests/registry_specs.py).
"""
from __future__ import annotations

import os.path as osp

import pytest

from helpers import last_accuracy, run_train
from registry_specs import EPOCHS, argv_for, checkpoint_files, reference_run, registered_trainers, \
    shared_data_root, spec_for


@pytest.mark.parametrize("name", registered_trainers())
def test_trains_checkpoints_and_reloads_to_the_same_metric(name, shared_dir, tmp_path):
    spec = spec_for(name)
    run = reference_run(name, shared_dir)
    log = open(osp.join(run, "log.txt")).read()
    assert "Finish training" in log and f"* {spec.metric}:" in log
    trained = last_accuracy(osp.join(run, "log.txt"), spec.metric)

    flags = ["--eval-only"]
    if spec.learns:
        files = checkpoint_files(run)
        models = sorted({f.split("/")[0] for f in files})
        assert models, f"{name} saved no checkpoint"
        for model in models:  # one file per model and epoch (TRAIN.CHECKPOINT_FREQ 1)
            for epoch in range(1, EPOCHS + 1):
                assert f"{model}/model.pth.tar-{epoch}" in files, (model, epoch, files)
        best = any(f.endswith("model-best.pth.tar") for f in files)
        flags += ["--model-dir", run] + ([] if best else ["--load-epoch", str(EPOCHS)])
    out = str(tmp_path / "eval")
    assert run_train(argv_for(name, shared_data_root(shared_dir), out, extra_flags=flags)) == 0
    assert last_accuracy(osp.join(out, "log.txt"), spec.metric) == trained
