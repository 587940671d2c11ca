"""torchrun with the gloo backend on CPU, 2 processes: the same prompt weights as one process.

Each rank takes its slice of the single-process global batches and gradients are averaged, so
the update equals the single-process update on the global batch; only rank 0 writes files, and
the test metrics are computed over the whole test split gathered from both ranks.
"""
import os
import re
import socket
import subprocess
import sys

import torch

from helpers import REPO_ROOT, last_accuracy, run_train

COOP_TINY = os.path.join(REPO_ROOT, "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml")
SYNTHETIC = os.path.join(REPO_ROOT, "configs/datasets/synthetic.yaml")


def _argv(data_root: str, out: str):
    return ["--root", data_root, "--seed", "3", "--trainer", "CoOp", "--dataset-config-file", SYNTHETIC,
            "--config-file", COOP_TINY, "--output-dir", out, "MODEL.BACKBONE.NAME", "tiny-vit",
            "INPUT.TRANSFORMS", "['normalize']", "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "DATASET.NUM_SHOTS", "4", "TEST.FEATURE_CACHE.ENABLED", "False",
            "OPTIM.LR", "0.002"]  # CoOp's learning rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equals_single_process(data_root, tmp_path):
    single = tmp_path / "single"
    assert run_train(_argv(data_root, str(single))) == 0

    ddp = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, VLPROMPT_SKIP_ENV_INFO="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "train.py", *_argv(data_root, str(ddp))]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = torch.load(single / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    b = torch.load(ddp / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), (key, (a[key] - b[key]).abs().max().item())
    init = torch.load(single / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert init["epoch"] == 2

    # One writer: a second rank would have produced log.txt-<time> or a second event file.
    assert sorted(f for f in os.listdir(ddp) if f.startswith("log")) == ["log.txt"]
    assert len(os.listdir(ddp / "tensorboard")) == 1
    assert sorted(os.listdir(ddp / "prompt_learner")) == ["checkpoint", "model.pth.tar-2"]
    # Metrics over the whole test split, gathered from both ranks.
    log = (ddp / "log.txt").read_text()
    assert re.search(r"\* total: 120\n", log)
    assert last_accuracy(str(ddp / "log.txt")) == last_accuracy(str(single / "log.txt"))


def test_unverified_trainer_refuses_torchrun(data_root, tmp_path, monkeypatch, capsys):
    """A trainer that has not declared SUPPORTS_DISTRIBUTED fails with one line instead of training wrongly."""
    from dassl.engine import trainer as trainer_module
    from helpers import toy_args

    monkeypatch.setattr(trainer_module, "get_world_size", lambda: 2)
    assert run_train(toy_args(data_root, str(tmp_path / "out"))) == 1
    err = capsys.readouterr().err
    assert "Vanilla has not been verified under torchrun" in err
