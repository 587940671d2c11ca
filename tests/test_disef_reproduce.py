"""``scripts/reproduce/flowers102_base2novel.sh``: the two named variants issue the intended commands.

The script runs with a stand-in ``PYTHON`` that records every command and writes the files the script reads back (a
finished ``log.txt``, a ``checkpoint`` pointer), so the test checks the plumbing in seconds: for each variant the
configs, shots, generation preset, synthetic folder (training runs only) and recipe options, and that the notebook
variant alone runs the improved DISEF with the CLIP-LoRA run as filter.  (``SMOKE=1`` with the real python trains
every method on the CPU in about ten minutes; that run is not part of the suite.)
"""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from helpers import REPO_ROOT

FAKE_PYTHON = r"""#!/bin/bash
echo "$*" >> "$CALLS"
if [ "$1" = train.py ]; then
    while [ $# -gt 0 ]; do
        if [ "$1" = --output-dir ]; then mkdir -p "$2/model"; printf '* accuracy: 50.0%%\n' > "$2/log.txt";
            echo model.pth.tar-3 > "$2/model/checkpoint"; fi
        shift
    done
elif [ "$1" = - ]; then
    cat > /dev/null
fi
"""


def _calls(tmp_path, smoke: bool) -> list[list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=str(fake), CALLS=str(calls), OUTPUT=str(tmp_path / "out"),
               SMOKE="1" if smoke else "0")
    proc = subprocess.run(["bash", "scripts/reproduce/flowers102_base2novel.sh", str(tmp_path / "data")], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [shlex.split(line) for line in calls.read_text().splitlines()]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _train_runs(calls, variant: str) -> dict[tuple[str, str], list[str]]:
    """(split, trainer/config) -> argv of the train.py runs of one variant."""
    runs = {}
    for argv in calls:
        if argv[0] == "train.py" and f"/out/{variant}/" in _value(argv, "--output-dir"):
            parts = _value(argv, "--output-dir").split(f"/out/{variant}/")[1].split("/")
            runs[(parts[0], f"{parts[2]}/{parts[3]}")] = argv
    return runs


@pytest.mark.parametrize("smoke", [False, True])
def test_two_named_variants(tmp_path, smoke):
    calls = _calls(tmp_path, smoke)
    generate = [argv for argv in calls if argv[0] == "scripts/disef/generate.py"]
    notebook, paper = _train_runs(calls, "notebook"), _train_runs(calls, "disef_paper")
    assert len({t for _, t in notebook}) == 5 and len({t for _, t in paper}) == 4  # improved DISEF: notebook only
    assert len({t for _, t in notebook if t.startswith("DISEF/")}) == 2
    assert len({t for _, t in paper if t.startswith("DISEF/")}) == 1
    for runs in (notebook, paper):  # every method trained on base and tested on new
        assert all((split, t) in runs for _, t in runs for split in ("train_base", "test_new"))
    for split, runs in (("train_base", notebook), ("train_base", paper)):
        for (where, trainer), argv in runs.items():
            assert ("TRAINER.DISEF.SYN_DIR" in argv) == (where == split and trainer.startswith("DISEF/")), argv
    assert {_value(g, "--preset") for g in generate} == {"notebook", "disef_paper"}
    improved = [g for g in generate if "--filter-lora" in g]
    assert len(improved) == 1 and _value(improved[0], "--preset") == "notebook"
    assert _value(improved[0], "--f1-threshold") == "0.7"
    assert "/notebook/train_base/" in _value(improved[0], "--filter-lora")
    if smoke:
        assert all("--tiny-models" in g for g in generate)
        nb_disef = notebook[("test_new", "DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8")]
        assert _value(nb_disef, "TRAINER.DISEF.CLIP_PREPROCESS") == "True"  # evaluation too
        paper_disef = paper[("train_base", "DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8")]
        assert _value(paper_disef, "TRAINER.DISEF.MIXUP_ALPHA") == "0.1"
        assert _value(paper_disef, "TRAINER.DISEF.RANDAUGMENT_OPS") == "2"
        return
    configs = {t for _, t in notebook}
    assert {"CLIP_LoRA/vit_b16_qv_r64-16_a32_ep15_notebook", "DISEF/vit_b16_qv_r64-16_a32_lam0.8_ep50_notebook",
            "DISEF/vit_b16_qv_r64-16_a32_lam0.95_lr2e-5_ep50_f1"} <= configs
    assert {"CLIP_LoRA/vit_b16_qkv_r2_a1_iters500", "DISEF/vit_b16_qv_r64-16_a32_lam0.8_ep50"} <= {t for _, t in paper}
    assert {_value(a, "DATASET.NUM_SHOTS") for a in notebook.values()} == {"-1"}
    assert {_value(a, "DATASET.NUM_SHOTS") for a in paper.values()} == {"16"}
    assert {_value(g, "--num-shots") for g in generate if _value(g, "--preset") == "disef_paper"} == {"16"}
    new_lora = paper[("test_new", "CLIP_LoRA/vit_b16_qkv_r2_a1_iters500")]
    assert _value(new_lora, "--load-epoch") == "3" and "--eval-only" in new_lora  # the last checkpoint
