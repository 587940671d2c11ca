"""scripts/grid.py: expansion, skip-if-finished, resume of a killed run, Slurm parameters (no cluster)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml

from dassl.engine import trainer as trainer_module
from helpers import REPO_ROOT, run_train, subprocess_env

_spec = importlib.util.spec_from_file_location("grid", os.path.join(REPO_ROOT, "scripts", "grid.py"))
grid = importlib.util.module_from_spec(_spec)
sys.modules["grid"] = grid
_spec.loader.exec_module(grid)


def _grid_file(tmp_path, data_root, **extra):
    spec = {
        "root": data_root,
        "output_root": str(tmp_path / "output"),
        "datasets": ["synthetic"],
        "shots": [2, 4],
        "seeds": [1, 2],
        "runs": [{"trainer": "Vanilla", "configs": ["cnn_small_ep10"]}],
        "opts": {"OPTIM.MAX_EPOCH": 2, "TRAIN.CHECKPOINT_FREQ": 1},
        "executor": "local",
        "workers": 2,
    }
    spec.update(extra)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_expand_grid_layout(tmp_path, data_root):
    runs = grid.expand_grid(grid.load_grid(_grid_file(tmp_path, data_root)))
    assert len(runs) == 4
    assert [os.path.relpath(r.output_dir, tmp_path / "output") for r in runs] == [
        "synthetic/Vanilla/cnn_small_ep10_2shots/seed1", "synthetic/Vanilla/cnn_small_ep10_2shots/seed2",
        "synthetic/Vanilla/cnn_small_ep10_4shots/seed1", "synthetic/Vanilla/cnn_small_ep10_4shots/seed2"]
    argv = runs[0].argv
    assert argv[argv.index("--seed") + 1] == "1" and argv[argv.index("DATASET.NUM_SHOTS") + 1] == "2"
    assert argv[-4:] == ["OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1"]


def test_unknown_grid_key_is_named(tmp_path, data_root):
    with pytest.raises(grid.GridError, match="seed"):
        grid.load_grid(_grid_file(tmp_path, data_root, seed=[1]))


def test_local_grid_runs_skips_and_resumes(tmp_path, data_root, monkeypatch, capsys):
    path = _grid_file(tmp_path, data_root)
    runs = grid.expand_grid(grid.load_grid(path))
    killed = runs[3]

    # Kill one run after its first epoch (its checkpoint exists, it never finished).
    original = trainer_module.SimpleTrainer.after_epoch

    def interrupted(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.SimpleTrainer, "after_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_train(killed.argv)
    monkeypatch.setattr(trainer_module.SimpleTrainer, "after_epoch", original)
    assert not grid.is_finished(killed.output_dir)

    assert grid.main([path]) == 0
    assert all(grid.is_finished(r.output_dir) for r in runs)
    resumed = [f for f in os.listdir(killed.output_dir) if f.startswith("log.txt-")]
    assert len(resumed) == 1
    assert "Found checkpoint at" in open(os.path.join(killed.output_dir, resumed[0])).read()
    out = capsys.readouterr().out
    assert "| Synthetic | Vanilla   | cnn_small_ep10 |       2 |" in out.replace("  |", " |") or "cnn_small_ep10" in out
    assert out.count("cnn_small_ep10") >= 2  # one table row per shot setting

    mtimes = {r.output_dir: os.path.getmtime(os.path.join(r.output_dir, "log.txt")) for r in runs}
    assert grid.main([path]) == 0
    assert all(os.path.getmtime(os.path.join(d, "log.txt")) == t for d, t in mtimes.items())
    assert all(len([f for f in os.listdir(r.output_dir) if f.startswith("log.txt")]) ==
               (2 if r is killed else 1) for r in runs)


def test_slurm_parameters_and_sbatch_script(tmp_path, data_root, monkeypatch):
    import submitit
    from submitit.slurm import slurm

    g = grid.load_grid(_grid_file(tmp_path, data_root, executor="slurm", slurm={
        "partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 6, "mem_gb": 40, "timeout_min": 90,
        "array_parallelism": 3, "account": "lab"}))
    params = grid.slurm_parameters(g)
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 2 and params["cpus_per_task"] == 6
    assert params["mem_gb"] == 40 and params["timeout_min"] == 90 and params["slurm_array_parallelism"] == 3
    assert params["slurm_account"] == "lab"

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # pretend srun exists
    executor = grid.make_executor(g, str(tmp_path / "logs"))
    assert isinstance(executor, submitit.AutoExecutor)
    text = executor._executor._make_submission_file_text("echo run", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --mem=40GB", "#SBATCH --time=90", "#SBATCH --account=lab", "#SBATCH --signal=USR2@120"):
        assert line in text, (line, text)


# Runs scripts/grid.py as a program with submitit unimportable (None in sys.modules makes ``import`` fail).
_WITHOUT_SUBMITIT = ("import runpy, sys; sys.modules['submitit'] = None; "
                     "sys.argv = ['scripts/grid.py'] + sys.argv[1:]; runpy.run_path('scripts/grid.py', run_name='__main__')")


def _grid_without_submitit(*args: str):
    return subprocess.run([sys.executable, "-c", _WITHOUT_SUBMITIT, *args], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_missing_cluster_extra_is_one_line(tmp_path, data_root):
    """Without submitit a grid with runs left exits 1 with one stderr line naming the extra and its install."""
    result = _grid_without_submitit(_grid_file(tmp_path, data_root))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "'cluster' extra" in lines[0] and 'pip install "vlprompt[cluster]"' in lines[0], lines[0]
    assert not (tmp_path / "output").exists()  # nothing was started


def test_dry_run_needs_no_cluster_extra(tmp_path, data_root):
    """``--dry-run`` only lists runs, so it works without submitit."""
    result = _grid_without_submitit(_grid_file(tmp_path, data_root), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("todo  synthetic/Vanilla/cnn_small_ep10/") == 4, result.stdout
