"""scripts/demo.sh end to end, as on a fresh clone, offline, from another working directory (~80 s on 2 cores).

Everything it writes (pre-trained tiny CLIP, synthetic data, DISEF images, runs, figure) goes to a temporary
folder; a proxy that cannot be reached makes any download attempt fail.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
import subprocess
import sys

from PIL import Image

from helpers import REPO_ROOT

NUMBER = r"(\d+\.\d+)"
# A row of the main table: dataset, backbone, trainer, config, shots, classes, mean ± std, ..., seeds (n/m)
RESULT_ROW = re.compile(rf"^\| (\S+) +\| (\S+) +\| (\S+) +\| (\S+) +\| +(-?\d+) +\| (all|base|new) +\| {NUMBER} ± "
                        rf"{NUMBER} +\|.*\| (\d+)/(\d+) +\|$")
# A row of the base-to-new table: dataset, backbone, trainer, config, shots, base, new, H, seeds
HM_ROW = re.compile(rf"^\| (\S+) +\| (\S+) +\| (\S+) +\| (\S+) +\| +(\d+) +\| {NUMBER} +\| {NUMBER} +\| {NUMBER} +\| "
                    rf"(\d+)/(\d+) +\|$")


def registered_trainers() -> list[str]:
    from dassl.engine import TRAINER_REGISTRY
    from vlprompt import trainers  # noqa: F401  (registers every trainer)

    return list(TRAINER_REGISTRY.registered_names())


def run_demo(tmp_path) -> subprocess.CompletedProcess:
    unreachable = "http://127.0.0.1:9"  # the discard port: any download fails at once
    env = dict(os.environ, PYTHON=sys.executable, DATA="data", OUTPUT="demo", FIGURE="figures/demo.png",
               VLPROMPT_PRETRAINED_DIR=str(tmp_path / "pretrained"), VLPROMPT_CACHE=str(tmp_path / "cache"),
               HF_HUB_OFFLINE="1", HTTP_PROXY=unreachable, HTTPS_PROXY=unreachable, http_proxy=unreachable,
               https_proxy=unreachable, NO_PROXY="", no_proxy="")
    # Relative DATA / OUTPUT / FIGURE, from a working directory outside the repository: they are the caller's.
    return subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "demo.sh")], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600)


def test_demo_runs_every_registered_trainer(tmp_path):
    """Exit 0; a numeric row for >= 10 trainers and every registered trainer in the table or named in one
    'cannot run' / 'FAILED' line; base, new and H = 2BN/(B+N) for ZeroshotCLIP, CoOp and CoCoOp; a real PNG."""
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert osp.isfile(tmp_path / "pretrained" / "tiny-vit-synthetic.pth")
    assert osp.isfile(tmp_path / "demo" / "demo.log") and osp.isdir(tmp_path / "data" / "synthetic")
    lines = result.stdout.splitlines()

    rows = [m.groups() for m in map(RESULT_ROW.match, lines) if m]
    with_results = {row[2] for row in rows if 0 <= float(row[6]) <= 100 and int(row[8]) >= 1}
    assert len(with_results) >= 10, result.stdout[-5000:]
    not_run = {line.split()[0] for line in lines if "cannot run in the demo:" in line or " FAILED: " in line}
    assert set(registered_trainers()) <= with_results | not_run, result.stdout[-5000:]
    by_key = {(row[2], row[5]): row for row in rows}
    datasets = {row[2]: row[0] for row in rows}
    assert {datasets.get(t, d) for t, d in (("LMPT", "SyntheticMultiLabel"), ("LangevinCoOp", "CIFAR10LT"))} == {
        "SyntheticMultiLabel", "CIFAR10LT"}  # multi-label and long-tailed data for the methods made for them
    for trainer, line in (("DISEF", "Synthetic images: 40 for 5 classes"),  # 8 generated per base class
                          ("MLPT", "Label noise: DATASET.NUM_FP=4")):
        if trainer in with_results:
            logs = glob.glob(str(tmp_path / "demo" / "runs" / "synthetic" / "shots_16" / trainer / "*" / "seed1" /
                                 "log.txt"))
            assert len(logs) == 1 and line in open(logs[0]).read(), (trainer, logs)

    pairs = {m.group(3): m.groups() for m in map(HM_ROW.match, lines) if m}
    for trainer in ("ZeroshotCLIP", "CoOp", "CoCoOp"):
        assert trainer in pairs, (trainer, result.stdout[-5000:])
        dataset, backbone, _, _, shots, base, new, h, n, _ = pairs[trainer]
        assert (dataset, backbone, shots, int(n) >= 1) == ("Synthetic", "tiny-vit-synthetic", "16", True)
        base, new, h = float(base), float(new), float(h)
        assert abs(h - 2 * base * new / (base + new)) < 0.006, (trainer, base, new, h)
        assert float(by_key[(trainer, "base")][6]) == base and float(by_key[(trainer, "new")][6]) == new

    figure = tmp_path / "figures" / "demo.png"
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert osp.getsize(figure) > 20_000
    with Image.open(figure) as image:
        assert image.width >= 1000 and image.height >= 600
