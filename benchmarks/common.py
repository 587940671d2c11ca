"""Shared benchmark plumbing: argument flags, median timing, peak memory, one result line per case.

Every benchmark runs the reference-style path and ours in one process on the same inputs and
prints: case, reference seconds, our seconds, ratio (reference / ours), max abs difference, peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--small", action="store_true", help="tiny sizes (smoke test)")
    return p


def environment(device: str) -> Dict[str, str]:
    env = {"device": device, "torch": torch.__version__, "threads": str(torch.get_num_threads()),
           "machine": platform.processor() or platform.machine()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item()


class Report:
    """Collects one row per case and prints them as aligned lines (and JSON on request)."""

    def __init__(self, title: str, device: str):
        self.title = title
        self.env = environment(device)
        self.rows: List[Dict[str, object]] = []
        print(f"# {title} — " + ", ".join(f"{k} {v}" for k, v in self.env.items()), flush=True)

    def add(self, case: str, ref_s: float, ours_s: float, diff: float, **extra) -> None:
        ratio = ref_s / ours_s if ours_s else float("inf")
        row = {"case": case, "reference_s": ref_s, "ours_s": ours_s, "ratio": ratio, "max_abs_diff": diff, **extra}
        self.rows.append(row)
        more = " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
        print(f"{case}: reference {ref_s:.4f}s ours {ours_s:.4f}s ratio {row['ratio']:.2f}x "
              f"max_abs_diff {diff:.2e} {more}".rstrip(), flush=True)

    def save(self, path: Optional[str]) -> None:
        if path:
            with open(path, "w") as f:
                json.dump({"title": self.title, "env": self.env, "rows": self.rows}, f, indent=2)
