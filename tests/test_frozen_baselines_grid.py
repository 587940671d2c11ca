"""A 3-seed grid of the four frozen-feature baselines, run twice on one feature cache (TEST.FEATURE_CACHE.DIR).

First run: the test split is encoded once for the whole grid (every method shares the entry), each seed's
training and val images once (linear probe, test transform) and each seed's augmented views once (shared by
Tip-Adapter-F and Tip-Adapter).  Second run, same seeds, new output folders: no split and no view is encoded
again — the image tower sees only the training batches of the two methods that train on fresh augmentations
(CLIP-Adapter, Tip-Adapter-F), exactly epochs x training images each — and every accuracy is the same (the
feature passes leave the RNG untouched, so a cache hit changes nothing downstream).

``scripts/reproduce/few_shot_baselines.sh``: with a stand-in ``PYTHON`` that records the commands, every cell of
the protocol is run once with its per-shots / per-dataset config and a second invocation trains nothing; with
``SMOKE=1`` and the real python, tiny runs on the Synthetic dataset end in one ``parse_test_res.py`` table.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import Counter

import pytest

from helpers import REPO_ROOT, build, build_cfg
from vlprompt.trainers.common.prompt_trainer import ClipPromptTrainer
from vlprompt.trainers.tip_adapter import trainer as tip_trainer

EPOCHS = 2
METHODS = {  # name: (config, epochs of training on images (0: closed-form fit), extra opts)
    # Tip-Adapter-F first: in the first run it encodes the views before its first training batch, in the second
    # it finds them; the same accuracy in both shows that a feature pass leaves the RNG untouched
    "TipAdapter_F": ("configs/trainers/TipAdapter_F/tiny_vit_aug2_ep10.yaml", EPOCHS,
                     ["OPTIM.MAX_EPOCH", str(EPOCHS)]),
    "TipAdapter": ("configs/trainers/TipAdapter/tiny_vit_aug2.yaml", 0, []),
    "LinearProbeCLIP": ("configs/trainers/LinearProbeCLIP/tiny_vit.yaml", 0, []),
    "CLIP_Adapter": ("configs/trainers/CLIP_Adapter/tiny_vit_ep50.yaml", EPOCHS, ["OPTIM.MAX_EPOCH", str(EPOCHS)]),
}
SEEDS = (1, 2, 3)
N_TRAIN = 40  # 4 shots x 10 classes; batch 8 in both training methods, no partial batch


def _run_grid(data_root: str, out: str, cache_dir: str, monkeypatch) -> tuple[dict, Counter, dict]:
    """(accuracy per run, encoded passes by kind, images through the image tower per run)."""
    passes: Counter = Counter()
    encode_split, encode_views = ClipPromptTrainer.encode_split, tip_trainer.encode_views

    def count_split(self, split, loader):
        passes[split] += 1
        return encode_split(self, split, loader)

    def count_views(*args, **kwargs):
        passes["views"] += 1
        return encode_views(*args, **kwargs)

    monkeypatch.setattr(ClipPromptTrainer, "encode_split", count_split)
    monkeypatch.setattr(tip_trainer, "encode_views", count_views)
    accuracies, images = {}, {}
    for seed in SEEDS:
        for name, (config, _, opts) in METHODS.items():
            cfg = build_cfg(name, config, f"{out}/{name}/seed{seed}", data_root, seed=seed, backbone="tiny-vit",
                            opts=["DATASET.NUM_SHOTS", "4", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
                                  "TEST.FEATURE_CACHE.DIR", cache_dir] + opts)
            trainer = build(cfg)
            seen = [0]
            trainer.model.image_encoder.register_forward_hook(
                lambda module, inputs, output: seen.__setitem__(0, seen[0] + inputs[0].shape[0]))
            trainer.train()
            accuracies[name, seed] = trainer.test()
            images[name, seed] = seen[0]
    return accuracies, passes, images


def test_second_grid_run_encodes_nothing_again(data_root, tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "cache")
    first_acc, first_passes, _ = _run_grid(data_root, str(tmp_path / "first"), cache_dir, monkeypatch)
    # test: once for the grid; train_x and val (the val shots are drawn per seed): once per seed (linear probe);
    # augmented views: once per seed (Tip-Adapter-F builds them, Tip-Adapter finds them)
    assert first_passes == Counter(test=1, train_x=len(SEEDS), val=len(SEEDS), views=len(SEEDS)), first_passes

    second_acc, second_passes, second_images = _run_grid(data_root, str(tmp_path / "second"), cache_dir, monkeypatch)
    assert second_passes == Counter(), second_passes
    expected = {(name, seed): epochs * N_TRAIN for seed in SEEDS for name, (_, epochs, _) in METHODS.items()}
    assert second_images == expected
    assert second_acc == first_acc


# ---------------------------------------------------------------------------------------------- the reproduce script
SCRIPT = "scripts/reproduce/few_shot_baselines.sh"
FAKE_PYTHON = r"""#!/bin/bash
echo "$*" >> "$CALLS"
if [ "$1" = train.py ]; then
    while [ $# -gt 0 ]; do
        if [ "$1" = --output-dir ]; then mkdir -p "$2"; printf '* accuracy: 50.0%%\n' > "$2/log.txt"; fi
        shift
    done
fi
"""


def _script(tmp_path, python: str, timeout: int = 120, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python, OUTPUT=str(tmp_path / "out"), **env)
    proc = subprocess.run(["bash", SCRIPT, str(tmp_path / "data")], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_calls(calls_file) -> list[list[str]]:
    lines = calls_file.read_text().splitlines() if calls_file.exists() else []
    return [shlex.split(line) for line in lines if line.startswith("train.py")]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


TINY_CONFIGS = {"LinearProbeCLIP": "tiny_vit", "CLIP_Adapter": "tiny_vit_ep50", "TipAdapter": "tiny_vit_aug2",
                "TipAdapter_F": "tiny_vit_aug2_ep10", "CoOp": "tiny_vit_ep50_ctxv1",
                "CLIP_LoRA": "tiny_vit_qkv_r2_a1_iters10_batch8"}


@pytest.mark.parametrize("backbone", ["vit_b16", "rn50"])
def test_reproduce_script_runs_the_protocol_and_skips_finished_runs(tmp_path, backbone):
    """Every (trainer, dataset, shots, seed) once, with the per-shots / per-dataset configs; a re-run trains nothing."""
    fake, calls = tmp_path / "python", tmp_path / "calls.txt"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    _script(tmp_path, str(fake), CALLS=str(calls), DATASETS="dtd imagenet", BACKBONE=backbone)
    runs = {(_value(a, "--trainer"), _value(a, "--dataset-config-file").split("/")[-1][:-5],
             _value(a, "DATASET.NUM_SHOTS"), _value(a, "--seed")): a for a in _train_calls(calls)}
    trainers = ["LinearProbeCLIP", "CLIP_Adapter", "TipAdapter", "TipAdapter_F", "CoOp"]
    trainers += ["CLIP_LoRA"] if backbone == "vit_b16" else []  # CLIP-LoRA's recipe is ViT-B/16 only
    assert len(_train_calls(calls)) == len(runs) == len(trainers) * 2 * 5 * 3
    assert {key[0] for key in runs} == set(trainers)
    config = {key: _value(argv, "--config-file") for key, argv in runs.items()}
    coop_epochs = {"1": "_ep50", "2": "_ep100", "4": "_ep100", "8": "", "16": ""}
    for shots, suffix in coop_epochs.items():
        for trainer in ("CoOp", "CLIP_Adapter"):
            assert config[trainer, "dtd", shots, "1"] == f"configs/trainers/{trainer}/{backbone}{suffix}.yaml"
            assert config[trainer, "imagenet", shots, "2"] == f"configs/trainers/{trainer}/{backbone}_ep50.yaml"
        assert config["TipAdapter_F", "dtd", shots, "3"] == f"configs/trainers/TipAdapter_F/{backbone}_dtd.yaml"
        assert config["LinearProbeCLIP", "imagenet", shots, "3"] == f"configs/trainers/LinearProbeCLIP/{backbone}.yaml"
    assert "TRAINER.COOP.N_CTX" in runs["CoOp", "dtd", "1", "1"]
    assert len({_value(a, "--output-dir") for a in runs.values()}) == len(runs)
    assert calls.read_text().splitlines()[-1].startswith("parse_test_res.py ") and "--table" in calls.read_text()

    calls.unlink()
    _script(tmp_path, str(fake), CALLS=str(calls), DATASETS="dtd imagenet", BACKBONE=backbone)
    assert _train_calls(calls) == []  # every folder has its result


def test_reproduce_script_smoke_uses_the_tiny_configs(tmp_path, pretrained_tiny_dir):
    """SMOKE=1: the six trainers on Synthetic with their tiny CPU configs, shots 1 and 2, seed 1."""
    fake, calls = tmp_path / "python", tmp_path / "calls.txt"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    _script(tmp_path, str(fake), CALLS=str(calls), SMOKE="1", VLPROMPT_PRETRAINED_DIR=pretrained_tiny_dir)
    configs = {(_value(a, "--trainer"), _value(a, "DATASET.NUM_SHOTS")): _value(a, "--config-file")
               for a in _train_calls(calls)}
    assert configs == {(trainer, shots): f"configs/trainers/{trainer}/{cfg}.yaml"
                       for trainer, cfg in TINY_CONFIGS.items() for shots in ("1", "2")}
    assert all(_value(a, "--dataset-config-file") == "configs/datasets/synthetic.yaml" for a in _train_calls(calls))


def test_reproduce_script_smoke_trains_on_synthetic(tmp_path, pretrained_tiny_dir):
    """SMOKE=1 with the real python: a tiny run on Synthetic (one trainer and 1 shot here, to stay fast; the
    commands of the others are checked above) ends in the result table."""
    proc = _script(tmp_path, sys.executable, timeout=600, SMOKE="1", SHOTS="1", TRAINERS="TipAdapter",
                   VLPROMPT_PRETRAINED_DIR=pretrained_tiny_dir)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| Synthetic")]
    assert [row.split("|")[3].strip() for row in rows] == ["TipAdapter"], proc.stdout[-2000:]
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[5] == "1" and cells[8] == "1/1" and float(cells[7].split()[0]) > 0, row
