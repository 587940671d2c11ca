"""scripts/demo.sh end to end, as on a fresh clone: offline, exit 0, a table with the three trainers (~80 s).

Everything it writes (pre-trained tiny CLIP, synthetic data, runs) goes to a temporary folder.
"""
from __future__ import annotations

import os
import os.path as osp
import re
import subprocess
import sys

from helpers import REPO_ROOT


def test_demo_prints_the_base_to_new_table(tmp_path):
    """Exit 0; rows for ZeroshotCLIP, CoOp and CoCoOp on base and new (2 seeds) and their base/new/H rows."""
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(tmp_path / "data"), OUTPUT=str(tmp_path / "demo"),
               VLPROMPT_PRETRAINED_DIR=str(tmp_path / "pretrained"))
    result = subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "demo.sh")], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert osp.isfile(tmp_path / "pretrained" / "tiny-vit-synthetic.pth")
    number = r"[\d.]+ +\|"
    for trainer, config in (("ZeroshotCLIP", "tiny_vit"), ("CoOp", "tiny_vit_ep50_ctxv1"),
                            ("CoCoOp", "tiny_vit_c4_ep10_batch4_ctxv1")):
        row = rf"\| Synthetic \| tiny-vit-synthetic \| {trainer} +\| {config} +\| +16 +\| +"
        for classes in ("base", "new"):  # one row per trainer and class half, averaged over 2 seeds
            assert re.search(rf"{row}{classes} +\| [\d.]+ ± {number} +2/2 +\|", result.stdout), (trainer, classes)
        assert re.search(rf"{row}{number} +{number} +{number} +2/2 +\|", result.stdout), (trainer, "base/new/H row")
