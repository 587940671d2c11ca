"""Output folders stay trustworthy: one live writer, config changes caught on resume, every bad input one
stderr line naming the culprit, and Ctrl-C / SIGTERM stop cleanly (exit 130 / 143) and resume.

The engine-level cases run on CoOp (one model) and MLPT (two models); the kill-and-resume cases of every
trainer are in tests/test_registry_faults.py.
"""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import shutil
import signal
import sys
import time

import pytest
import torch

from dataset_fixtures import make_dtd
from dassl.engine.run_guard import RunLock
from helpers import last_accuracy, run_train, toy_args, train_argv
from registry_specs import argv_for, checkpoint_files, reference_run, shared_data_root


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _copy_run(reference: str, out: str) -> str:
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("log.txt*", "tensorboard", "DONE"))
    return out


def _newest_log(folder: str) -> str:
    return max(glob.glob(osp.join(folder, "log.txt*")), key=osp.getmtime)


# ----------------------------------------------------------------------------- one writer, one config
def test_a_second_live_run_into_the_folder_is_refused(shared_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    with RunLock(out):  # another run holds the folder
        assert run_train(argv_for("CoOp", shared_data_root(shared_dir), out)) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "another run is writing to" in lines[0] and out in lines[0], lines
    assert not glob.glob(osp.join(out, "*", "model.pth.tar-*"))


def test_a_stale_lock_is_taken_over(shared_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text("PID 999999 on gone-host, started 2020-01-01T00:00:00\n")  # its owner died
    assert run_train(argv_for("CoOp", shared_data_root(shared_dir), str(out))) == 0
    assert "Took over a stale lock" in open(_newest_log(str(out))).read()
    assert not (out / "run.lock").exists()  # released at the end


def test_resuming_with_a_changed_config_stops_with_the_keys(shared_dir, tmp_path, capsys):
    out = _copy_run(reference_run("CoOp", shared_dir), str(tmp_path / "run"))
    manifest = json.load(open(osp.join(out, "run_manifest.json")))
    assert manifest["config"]["DATASET.NUM_SHOTS"] == 4 and manifest["config"]["TRAINER.NAME"] == "CoOp"
    data = shared_data_root(shared_dir)
    assert run_train(argv_for("CoOp", data, out, extra_opts=["DATASET.NUM_SHOTS", "2"])) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "DATASET.NUM_SHOTS: 4 -> 2" in lines[0] and "--resume-anyway" in lines[0], lines
    # Keys that change no result do not stop a resume; --resume-anyway overrides the check.
    assert run_train(argv_for("CoOp", data, out, extra_opts=["DATALOADER.NUM_WORKERS", "0",
                                                             "TRAIN.PRINT_FREQ", "3"])) == 0
    assert run_train(argv_for("CoOp", data, out, extra_flags=["--resume-anyway"],
                              extra_opts=["DATASET.NUM_SHOTS", "2"])) == 0
    assert json.load(open(osp.join(out, "run_manifest.json")))["config"]["DATASET.NUM_SHOTS"] == 2


def test_models_saved_at_different_epochs_resume_from_the_common_one(shared_dir, tmp_path):
    reference = reference_run("MLPT", shared_dir)
    out = _copy_run(reference, str(tmp_path / "run"))
    os.remove(osp.join(out, "prompt_learner2", "model.pth.tar-2"))  # a kill between the two branches' saves
    assert run_train(argv_for("MLPT", shared_data_root(shared_dir), out)) == 0
    assert "resuming from epoch 1, the newest epoch every model has" in open(_newest_log(out)).read()
    for rel in checkpoint_files(reference):
        a = torch.load(osp.join(reference, rel), weights_only=True)["state_dict"]
        b = torch.load(osp.join(out, rel), weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), rel


def test_an_empty_checkpoint_pointer_does_not_matter(shared_dir, tmp_path):
    reference = reference_run("CoOp", shared_dir)
    out = _copy_run(reference, str(tmp_path / "run"))
    open(osp.join(out, "prompt_learner", "checkpoint"), "w").close()
    assert run_train(argv_for("CoOp", shared_data_root(shared_dir), out)) == 0
    assert "Previous epoch: 2" in open(_newest_log(out)).read()
    assert last_accuracy(_newest_log(out)) == last_accuracy(osp.join(reference, "log.txt"))


# ----------------------------------------------------------------------------- broken files: one line each
def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _empty(path: str) -> None:
    open(path, "wb").close()


def _zero(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


@pytest.mark.parametrize("damage", [_truncate, _empty, _zero], ids=["truncated", "zero-byte", "zeroed"])
def test_every_checkpoint_unreadable_is_one_line_naming_a_file(damage, shared_dir, tmp_path, capsys):
    out = _copy_run(reference_run("CoOp", shared_dir), str(tmp_path / "run"))
    for path in glob.glob(osp.join(out, "prompt_learner", "model.pth.tar-*")):
        damage(path)
    assert run_train(argv_for("CoOp", shared_data_root(shared_dir), out)) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "no readable checkpoint" in lines[0] and "model.pth.tar-2" in lines[0], lines


def test_a_checkpoint_of_another_trainer_is_one_line(shared_dir, tmp_path, capsys):
    vanilla = reference_run("Vanilla", shared_dir)
    out = tmp_path / "run"
    shutil.copytree(osp.join(vanilla, "model"), out / "prompt_learner")  # no manifest: an older or copied folder
    assert run_train(argv_for("CoOp", shared_data_root(shared_dir), str(out))) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "does not fit the model" in lines[0] and "model.pth.tar-2" in lines[0], lines


def test_eval_only_on_a_corrupt_checkpoint_is_one_line(shared_dir, tmp_path, capsys):
    model_dir = _copy_run(reference_run("CoOp", shared_dir), str(tmp_path / "model"))
    _zero(osp.join(model_dir, "prompt_learner", "model.pth.tar-2"))
    argv = argv_for("CoOp", shared_data_root(shared_dir), str(tmp_path / "eval"),
                    extra_flags=["--eval-only", "--model-dir", model_dir, "--load-epoch", "2"])
    assert run_train(argv) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "model.pth.tar-2" in lines[0], lines


def test_malformed_yaml_names_the_file_and_line(data_root, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("OPTIM:\n  LR: 0.1\n  MAX_EPOCH: [1, 2\nTRAIN:\n  PRINT_FREQ: 5\n")
    assert run_train(train_argv("Vanilla", str(config), data_root, str(tmp_path / "out"))) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"malformed YAML in {config}:" in lines[0], lines


def test_random_bytes_as_backbone_file_is_one_line(data_root, tmp_path, capsys):
    junk = tmp_path / "weights.pt"
    junk.write_bytes(os.urandom(4096))
    argv = argv_for("CoOp", data_root, str(tmp_path / "out"), extra_opts=["MODEL.BACKBONE.NAME", str(junk)])
    assert run_train(argv) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and str(junk) in lines[0], lines


def _dtd_argv(root: str, out: str, extra=()) -> list[str]:
    return train_argv("Vanilla", "configs/trainers/Vanilla/cnn_small_ep10.yaml", root, out, extra=extra,
                      dataset_config="configs/datasets/dtd.yaml", opts=["OPTIM.MAX_EPOCH", "1"])


def test_split_file_label_out_of_range_names_the_entry(tmp_path, capsys):
    mini = make_dtd(str(tmp_path / "data"))
    assert run_train(_dtd_argv(str(tmp_path / "data"), str(tmp_path / "first"), extra=["--no-train"])) == 0
    split = json.load(open(mini.split_json))  # written by the reader on first use, as CoOp's
    split["train"][3][1] = 99
    json.dump(split, open(mini.split_json, "w"))
    capsys.readouterr()
    assert run_train(_dtd_argv(str(tmp_path / "data"), str(tmp_path / "out"))) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and mini.split_json in lines[0] and "train[3] has label 99" in lines[0], lines


def test_an_empty_image_folder_is_named(tmp_path, capsys):
    images = tmp_path / "data" / "dtd" / "images"
    images.mkdir(parents=True)
    assert run_train(_dtd_argv(str(tmp_path / "data"), str(tmp_path / "out"))) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"{images} holds no class folders" in lines[0], lines


def test_more_shots_than_images_is_one_warning_in_the_log(data_root, tmp_path):
    out = str(tmp_path / "out")
    assert run_train(toy_args(data_root, out, opts=["DATASET.NUM_SHOTS", "20", "OPTIM.MAX_EPOCH", "1"])) == 0
    warnings = [line for line in open(osp.join(out, "log.txt")) if "DATASET.NUM_SHOTS 20:" in line]
    assert len(warnings) == 1 and "10 of 10 classes have fewer training images (as few as 16)" in warnings[0]


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_cleanly_and_the_run_resumes(signum, code, data_root, tmp_path):
    out = str(tmp_path / "run")
    argv = toy_args(data_root, out, opts=["OPTIM.MAX_EPOCH", "200", "TRAIN.CHECKPOINT_FREQ", "1"])
    stderr = tmp_path / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # the training process, with its stderr in a file
        code = 1
        try:
            sys.stderr = open(stderr, "w", buffering=1)  # pytest captures sys.stderr; the child writes a file
            code = run_train(argv)
        finally:
            os._exit(code)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until epoch 3 is under way
        log = osp.join(out, "log.txt")
        if osp.exists(log) and "epoch [3/200]" in open(log).read():
            break
        time.sleep(0.05)
    os.kill(pid, signum)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == code
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted at epoch ") and "re-run the same command" in lines[0]
    assert not glob.glob(osp.join(out, "*", "*.tmp*")) and not glob.glob(osp.join(out, "*", "*.pending"))
    assert not osp.exists(osp.join(out, "run.lock"))
    saved = sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob(osp.join(out, "model", "model.pth.tar-*")))
    assert saved and saved == list(range(1, saved[-1] + 1))
    short = toy_args(data_root, out, extra=["--resume-anyway"], opts=["OPTIM.MAX_EPOCH", str(saved[-1] + 1)])
    assert run_train(short) == 0  # resumes after the last complete epoch (a shorter schedule: --resume-anyway)
    assert f"Previous epoch: {saved[-1]}" in open(_newest_log(out)).read()


def test_building_the_data_leaves_the_random_streams_as_they_were(tmp_path):
    """Drawing the few-shot subset (first run on a root) or reading its cache: the RNGs continue alike."""
    import random

    import numpy as np

    from dassl.data import DataManager
    from dassl.utils import set_random_seed
    from helpers import build_cfg

    cfg = build_cfg("CoOp", "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml", str(tmp_path / "out"),
                    str(tmp_path / "data"), opts=["DATASET.NUM_SHOTS", "4"])
    after = []
    for attempt in ("draws the subset", "reads the cache"):
        set_random_seed(1)
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
        set_random_seed(1)
        DataManager(cfg)
        after.append((random.random(), np.random.rand(), torch.rand(1).item()))
        assert after[-1] == expected, attempt
    assert len(glob.glob(str(tmp_path / "data" / "synthetic" / "*" / "split_fewshot" / "*.pkl"))) == 1
