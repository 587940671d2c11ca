"""The prepared GPU check: every trainer on CUDA in fp16 and amp, then every benchmark on CUDA, one summary.

    python scripts/gpu_check.py --out gpu_check            # writes gpu_check/gpu_check.{json,md}
    bash scripts/gpu_check.sh                              # the same, with the environment set up

Part 1 trains every registered trainer for a few iterations (2 tiny epochs: the tiny random CLIP on 4 shots of
the Synthetic dataset, the registry tests' settings) with ``TRAINER.<NODE>.PREC`` fp16 and amp, and records
the exit code, the time and the final metric; a trainer that refuses a precision (LoRA methods refuse fp16) is
recorded as refused.  Part 2 runs each ``benchmarks/bench_*.py`` with ``--device cuda`` at its full size and
keeps its JSON.  Meant to finish in under 8 minutes on one GPU; ``--device cpu`` runs the same steps on the CPU
(fp16 and amp then fall back to fp32) to try the script without a GPU.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Dict, List

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.append(REPO_ROOT)
sys.path.append(osp.join(REPO_ROOT, "tests"))  # registry_specs: the tiny run settings of every trainer

PRECISIONS = ("fp16", "amp")
BENCHMARK_TIMEOUT = 150  # seconds per benchmark


def trainer_runs(device: str, out: str, names: List[str]) -> List[Dict]:
    from registry_specs import argv_for, spec_for  # noqa: E402

    results = []
    for name in names:
        node = prec_node(name)
        for prec in PRECISIONS if node else ("fp32",):
            opts = ["USE_CUDA", str(device == "cuda")] + ([f"TRAINER.{node}.PREC", prec] if node else [])
            folder = osp.join(out, "runs", f"{name}-{prec}")
            argv = argv_for(name, osp.join(out, "data"), folder, extra_opts=opts)
            start = time.time()
            proc = subprocess.run([sys.executable, osp.join(REPO_ROOT, "train.py"), *argv], cwd=REPO_ROOT,
                                  capture_output=True, text=True, env=dict(os.environ, VLPROMPT_SKIP_ENV_INFO="1"))
            metric = spec_for(name).metric
            values = re.findall(rf"\* {metric}: ([\d.]+)%", proc.stdout)
            status = "ok" if proc.returncode == 0 else "refused" if "PREC" in proc.stderr else "failed"
            results.append({"trainer": name, "prec": prec, "status": status, "seconds": round(time.time() - start, 1),
                            metric: float(values[-1]) if values else None, "stderr": proc.stderr.strip()[-300:]})
            print(f"{name:24s} {prec:5s} {status:8s} {results[-1]['seconds']:6.1f}s {metric} {results[-1][metric]}",
                  flush=True)
    return results


def prec_node(name: str) -> str:
    """The ``TRAINER.<NODE>`` holding the trainer's PREC, or "" when it has none (Vanilla)."""
    from dassl.engine import TRAINER_REGISTRY
    from vlprompt import trainers  # noqa: F401  (registers every trainer)

    cls = TRAINER_REGISTRY.get(name)
    return cls.cfg_node_name() if hasattr(cls, "cfg_node_name") else ""


def benchmark_runs(device: str, out: str) -> List[Dict]:
    results = []
    for script in sorted(glob.glob(osp.join(REPO_ROOT, "benchmarks", "bench_*.py"))):
        name = osp.splitext(osp.basename(script))[0]
        help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True).stdout
        report = osp.join(out, f"{name}.json")
        argv = [sys.executable, script]
        argv += ["--device", device] if "--device" in help_text else []
        argv += ["--json", report] if "--json" in help_text else []
        start = time.time()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=BENCHMARK_TIMEOUT, cwd=REPO_ROOT)
            status, tail = ("ok" if proc.returncode == 0 else "failed"), (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            status, tail = "timeout", ""
        figures = json.load(open(report)) if osp.isfile(report) else None
        results.append({"benchmark": name, "status": status, "seconds": round(time.time() - start, 1),
                        "figures": figures, "output": tail})
        print(f"{name:28s} {status:8s} {results[-1]['seconds']:6.1f}s", flush=True)
    return results


def environment(device: str) -> Dict:
    import torch

    info = {"torch": torch.__version__, "device": device, "cuda": torch.version.cuda}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown(summary: Dict) -> str:
    lines = [f"# GPU check ({summary['environment'].get('gpu', summary['environment']['device'])}, "
             f"torch {summary['environment']['torch']})", "", "| trainer | prec | status | seconds | metric |",
             "|---|---|---|---|---|"]
    for r in summary["trainers"]:
        metric = r.get("accuracy", r.get("mAP"))
        lines.append(f"| {r['trainer']} | {r['prec']} | {r['status']} | {r['seconds']} | {metric} |")
    lines += ["", "| benchmark | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['status']} | {r['seconds']} |" for r in summary["benchmarks"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for the runs and the summary")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--trainers", nargs="*", default=None, help="only these trainers (default: all)")
    parser.add_argument("--skip-benchmarks", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run on a GPU machine or pass --device cpu to try the steps", file=sys.stderr)
        return 1
    from registry_specs import registered_trainers

    os.makedirs(args.out, exist_ok=True)
    summary = {"environment": environment(args.device),
               "trainers": trainer_runs(args.device, args.out, args.trainers or registered_trainers()),
               "benchmarks": [] if args.skip_benchmarks else benchmark_runs(args.device, args.out)}
    with open(osp.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(osp.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(summary))
    bad = [r for r in summary["trainers"] + summary["benchmarks"] if r["status"] not in ("ok", "refused")]
    print(f"summary: {osp.join(args.out, 'gpu_check.md')} ({len(bad)} failed)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
