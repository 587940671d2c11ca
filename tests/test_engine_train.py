"""The toy trainer through ``train.py``: log formats, checkpoints, eval-only, resume, parse_test_res."""
import os
import re
import subprocess
import sys

import pytest
import torch

from vlprompt import parse_test_res
from dassl.engine import trainer as trainer_module
from helpers import PROGRESS_LINE, REPO_ROOT, last_accuracy, run_train, subprocess_env, toy_args


@pytest.fixture(scope="module")
def three_seed_runs(data_root, tmp_path_factory):
    """Three seeds of the toy trainer (4 epochs each) under one experiment folder."""
    exp = tmp_path_factory.mktemp("exp") / "Vanilla_cnn"
    for seed in (1, 2, 3):
        assert run_train(toy_args(data_root, str(exp / f"seed{seed}"), seed=seed)) == 0
    return exp


def test_log_lines_and_checkpoint_layout(three_seed_runs):
    run = three_seed_runs / "seed1"
    log = (run / "log.txt").read_text().splitlines()
    progress = [line for line in log if line.startswith("epoch [")]
    assert progress and all(PROGRESS_LINE.match(line) for line in progress), progress[:2]
    assert "Finish training" in log and "Deploy the last-epoch model" in log
    assert "Evaluate on the *test* set" in log
    block = log[log.index("=> result"):log.index("=> result") + 6]
    assert [re.sub(r"[\d.,]+", "N", line) for line in block] == [
        "=> result", "* total: N", "* correct: N", "* accuracy: N%", "* error: N%", "* macro_fN: N%"]
    assert any(re.fullmatch(r"Elapsed: \d+:\d{2}:\d{2}", line) for line in log)
    assert (run / "model" / "checkpoint").read_text() == "model.pth.tar-4\n"
    ckpt = torch.load(run / "model" / "model.pth.tar-4", weights_only=True)
    assert set(ckpt) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert ckpt["epoch"] == 4 and ckpt["val_result"] is None
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run / "tensorboard"))


def test_accuracy_above_chance(three_seed_runs):
    # 10 classes: chance is 10%.
    accs = [last_accuracy(str(three_seed_runs / f"seed{s}" / "log.txt")) for s in (1, 2, 3)]
    assert min(accs) > 30.0, accs


def test_eval_only_reproduces_accuracy(three_seed_runs, data_root, tmp_path):
    model_dir = three_seed_runs / "seed1"
    out = tmp_path / "eval"
    argv = toy_args(data_root, str(out), seed=1, extra=["--eval-only", "--model-dir", str(model_dir), "--load-epoch", "4"])
    assert run_train(argv) == 0
    log = (out / "log.txt").read_text()
    assert "val_result=None" in log
    assert last_accuracy(str(out / "log.txt")) == last_accuracy(str(model_dir / "log.txt"))


def test_parse_test_res_mean_std(three_seed_runs, capsys):
    args = parse_test_res.build_parser().parse_args([str(three_seed_runs)])
    parse_test_res.main(args)
    out = capsys.readouterr().out
    accs = [last_accuracy(str(three_seed_runs / f"seed{s}" / "log.txt")) for s in (1, 2, 3)]
    mean, std = sum(accs) / 3, (sum((a - sum(accs) / 3) ** 2 for a in accs) / 3) ** 0.5
    assert f"* accuracy: {mean:.2f}% +- {std:.2f}%" in out
    assert out.count("file: ") == 3


def test_parse_test_res_table(three_seed_runs, capsys):
    args = parse_test_res.build_parser().parse_args([str(three_seed_runs.parent), "--table", "--format", "csv"])
    parse_test_res.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "dataset,trainer,config,shots,classes,mean,std,n,folder,backbone,seeds_total,skipped"
    row = lines[1].split(",")
    assert row[:5] == ["Synthetic", "Vanilla", "cnn_small_ep10", "-1", "all"] and row[7] == "3"


def test_parse_test_res_reads_old_end_marker(tmp_path, capsys):
    for seed, acc in ((1, 70.0), (2, 80.0)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "log.txt").write_text(f"* accuracy: 1.0%\nFinished training\n=> result\n* accuracy: {acc}%\n")
    parse_test_res.main(parse_test_res.build_parser().parse_args([str(tmp_path)]))
    assert "* accuracy: 75.00% +- 5.00%" in capsys.readouterr().out


def test_resume_is_bit_identical(data_root, tmp_path, monkeypatch):
    """Stop after epoch 2 of 4, start again into the same folder: same weights and accuracy."""
    opts = ["TRAIN.CHECKPOINT_FREQ", "1"]
    full = tmp_path / "full"
    assert run_train(toy_args(data_root, str(full), seed=5, opts=opts)) == 0

    original_after_epoch = trainer_module.SimpleTrainer.after_epoch

    def interrupted_after_epoch(self):
        original_after_epoch(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(trainer_module.SimpleTrainer, "after_epoch", interrupted_after_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(toy_args(data_root, str(part), seed=5, opts=opts))
    monkeypatch.setattr(trainer_module.SimpleTrainer, "after_epoch", original_after_epoch)
    assert (part / "model" / "checkpoint").read_text() == "model.pth.tar-2\n"
    assert run_train(toy_args(data_root, str(part), seed=5, opts=opts)) == 0

    resumed_logs = [f for f in os.listdir(part) if f.startswith("log.txt-")]
    assert len(resumed_logs) == 1 and "Found checkpoint at" in (part / resumed_logs[0]).read_text()
    a = torch.load(full / "model" / "model.pth.tar-4", weights_only=True)
    b = torch.load(part / "model" / "model.pth.tar-4", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert last_accuracy(str(full / "log.txt")) == last_accuracy(str(part / resumed_logs[0]))


def _run_cli(args):
    env = subprocess_env()
    env.pop("VLPROMPT_DEBUG", None)
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", ["unknown_trainer", "unknown_dataset", "missing_config", "missing_dataset_dir"])
def test_bad_input_is_one_clear_line(case, data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    base = ["--root", data_root, "--output-dir", str(tmp_path / "out")]
    if case == "unknown_trainer":
        args = base + ["--trainer", "CoOOp"]
        expect = [r"\[CoOOp\]", "Vanilla"]
    elif case == "unknown_dataset":
        args = base + ["--trainer", "Vanilla", "--backbone", "cnn_small", "DATASET.NAME", "Synthetc"]
        expect = [r"\[Synthetc\]", "Synthetic"]
    elif case == "missing_config":
        args = base + ["--trainer", "Vanilla", "--config-file", "configs/trainers/Vanilla/nope.yaml"]
        expect = ["config file not found", "nope.yaml"]
    else:
        args = ["--root", str(tmp_path / "no_data"), "--output-dir", str(tmp_path / "out"), "--trainer", "Vanilla",
                "--backbone", "cnn_small", "DATASET.NAME", "OxfordPets"]
        expect = [str(tmp_path / "no_data"), "DATASETS.md"]
    if case == "unknown_trainer":  # one case through a real `python train.py` process, the others in-process
        proc = _run_cli(args)
        code, stderr = proc.returncode, proc.stderr
    else:
        capsys.readouterr()
        code, stderr = run_train(args), capsys.readouterr().err
    assert code == 1, stderr
    err_lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), stderr
    for pattern in expect:
        assert re.search(pattern, err_lines[0]), err_lines[0]


def test_resumed_best_val_run_keeps_its_best(data_root, tmp_path, monkeypatch):
    """A best_val run stopped after epoch 2 resumes knowing the best val result saved so far."""
    from dassl.engine.trainer import SimpleTrainer

    opts = ["TRAIN.CHECKPOINT_FREQ", "1", "TEST.FINAL_MODEL", "best_val"]
    original = SimpleTrainer.after_epoch

    def interrupted(self):
        original(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(SimpleTrainer, "after_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train(toy_args(data_root, str(tmp_path), seed=2, opts=opts))
    saved = torch.load(tmp_path / "model" / "model-best.pth.tar", weights_only=True)["val_result"]
    assert isinstance(saved, float)

    seen = {}
    original_before = SimpleTrainer.before_train

    def record(self):
        original_before(self)
        seen["best"] = self.best_result

    monkeypatch.setattr(SimpleTrainer, "after_epoch", original)
    monkeypatch.setattr(SimpleTrainer, "before_train", record)
    assert run_train(toy_args(data_root, str(tmp_path), seed=2, opts=opts)) == 0
    assert seen["best"] == saved
