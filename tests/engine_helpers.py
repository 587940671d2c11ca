"""Helpers for running ``train.py`` in-process on the synthetic dataset with the toy trainer."""
from __future__ import annotations

import os
import re
from typing import List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO_ROOT, "configs/trainers/Vanilla/cnn_small_ep10.yaml")
SYNTHETIC_CONFIG = os.path.join(REPO_ROOT, "configs/datasets/synthetic.yaml")

# Dassl's progress line (dassl_engine.md §3.4), with a `loss` and an `acc` meter.
PROGRESS_LINE = re.compile(
    r"^epoch \[\d+/\d+\] batch \[\d+/\d+\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) lr \d\.\d{4}e[+-]\d{2} eta \d+:\d{2}:\d{2}$"
)


def toy_args(data_root: str, output_dir: str, seed: int = 1, extra: Optional[List[str]] = None,
             opts: Optional[List[str]] = None) -> List[str]:
    args = [
        "--root", data_root, "--seed", str(seed), "--trainer", "Vanilla",
        "--dataset-config-file", SYNTHETIC_CONFIG, "--config-file", TOY_CONFIG,
        "--output-dir", output_dir,
    ]
    args += extra or []
    args += ["OPTIM.MAX_EPOCH", "4"] + (opts or [])
    return args


def run_train(argv: List[str]) -> int:
    from vlprompt import train

    return train.cli(argv)


def last_accuracy(log_path: str) -> float:
    values = re.findall(r"\* accuracy: ([\d.]+)%", open(log_path).read())
    assert values, f"no accuracy line in {log_path}"
    return float(values[-1])
