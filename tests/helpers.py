"""Helpers every test module shares: the repository paths, train.py's argv, in-process and torchrun runs,
building a trainer the way train.py does, and a tiny seeded CLIP.

Fixtures (``data_root``, ``pretrained_tiny_dir``) live in ``tests/conftest.py``; method-specific data writers
live beside their tests (``*_helpers.py``).
"""
from __future__ import annotations

import os
import os.path as osp
import re
import socket
import subprocess
import sys
from functools import lru_cache
from typing import List, Optional, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC_YAML = osp.join(REPO_ROOT, "configs", "datasets", "synthetic.yaml")
TOY_CONFIG = osp.join(REPO_ROOT, "configs/trainers/Vanilla/cnn_small_ep10.yaml")

# Dassl's progress line, with a `loss` and an `acc` meter.
PROGRESS_LINE = re.compile(
    r"^epoch \[\d+/\d+\] batch \[\d+/\d+\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) lr \d\.\d{4}e[+-]\d{2} eta \d+:\d{2}:\d{2}$"
)


def repo_path(*parts: str) -> str:
    return osp.join(REPO_ROOT, *parts)


def train_argv(trainer: str, config_file: str, data_root: str, output_dir: str, seed: int = 1,
               dataset_config: str = SYNTHETIC_YAML, backbone: str = "", extra: Sequence[str] = (),
               opts: Sequence[str] = ()) -> List[str]:
    """``train.py``'s arguments: flags, then ``extra`` flags, then ``KEY VALUE`` ``opts``.

    ``config_file`` and ``dataset_config`` may be relative to the repository root.
    """
    argv = ["--root", data_root, "--seed", str(seed), "--trainer", trainer,
            "--dataset-config-file", repo_path(dataset_config), "--config-file", repo_path(config_file),
            "--output-dir", output_dir]
    if backbone:
        argv += ["--backbone", backbone]
    return argv + list(extra) + list(opts)


def toy_args(data_root: str, output_dir: str, seed: int = 1, extra: Optional[List[str]] = None,
             opts: Optional[List[str]] = None) -> List[str]:
    """The toy trainer (Vanilla, small CNN) for 4 epochs on the synthetic dataset."""
    return train_argv("Vanilla", TOY_CONFIG, data_root, output_dir, seed=seed, extra=extra or [],
                      opts=["OPTIM.MAX_EPOCH", "4"] + (opts or []))


def run_train(argv: List[str]) -> int:
    """``train.py`` in this process; returns its exit code."""
    from vlprompt import train

    return train.cli(argv)


def subprocess_env(**extra: str) -> dict:
    """Environment for a child python: the repository importable (last on the path), one thread, no env dump."""
    env = dict(os.environ, VLPROMPT_SKIP_ENV_INFO="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), REPO_ROOT) if p)
    return env


def run_train_subprocess(argv: Sequence[str], timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """``python train.py argv`` in a child process (exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, repo_path("train.py"), *argv], cwd=REPO_ROOT, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(argv: Sequence[str], nproc: int = 2, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc train.py argv`` on the CPU (gloo backend)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), repo_path("train.py"), *argv]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def last_accuracy(log_path: str, keyword: str = "accuracy") -> float:
    values = re.findall(rf"\* {keyword}: ([\d.]+)%", open(log_path).read())
    assert values, f"no {keyword} line in {log_path}"
    return float(values[-1])


def build_cfg(trainer: str, config_file: str, output_dir: str, root: str, seed: int = 1,
              opts: Sequence[str] = (), backbone: str = "", dataset_config: str = SYNTHETIC_YAML):
    """The frozen config ``train.py`` would build for these flags."""
    from vlprompt.train import build_parser, setup_cfg

    argv = train_argv(trainer, config_file, root, output_dir, seed=seed, dataset_config=dataset_config,
                      backbone=backbone, opts=opts)
    return setup_cfg(build_parser().parse_args(argv))


def build(cfg):
    """Seed as ``train.py`` does, then build the registered trainer."""
    from dassl.engine import build_trainer
    from dassl.utils import set_random_seed

    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def train_and_test(cfg) -> tuple[object, float]:
    """Train (which ends with a test) and return the trainer and its test accuracy."""
    trainer = build(cfg)
    trainer.train()
    return trainer, trainer.test()


def eval_only(cfg, model_dir: str = "", load_epoch: Optional[int] = None) -> tuple[object, float]:
    """``train.py --eval-only``: build, load, test."""
    trainer = build(cfg)
    trainer.load_model(model_dir, epoch=load_epoch)
    return trainer, trainer.test()


@lru_cache(maxsize=None)
def tiny_clip_fp32(arch: str = "vit"):
    """A seeded random tiny CLIP in fp32 (shared, do not modify)."""
    from vlprompt.clip.model import build_model
    from vlprompt.clip.tiny import tiny_state_dict

    return build_model(tiny_state_dict(arch), fp16=False).float().eval()


def run_forked(argv: Sequence[str], nproc: int = 1, before=None) -> List[int]:
    """``train.py argv`` in ``nproc`` children forked from this process (already holding torch and vlprompt,
    so nothing is imported again); with ``nproc`` > 1 they form a gloo process group as torchrun's ranks would.

    ``before(rank)`` runs in each child first (e.g. to install a fault).  Returns each child's exit code, or
    ``-signal`` when it was killed by a signal (as ``subprocess`` reports it).
    """
    port = free_port()
    children = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                if nproc > 1:
                    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                if before is not None:
                    before(rank)
                code = run_train(list(argv))
            except BaseException:  # noqa: B036  (report anything, then leave the child)
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
