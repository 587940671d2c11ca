"""vlprompt installs beside widely used packages without clashing, and works from any directory.

- In one process started outside the repository, ``import datasets`` / ``import clip`` give the installed
  HuggingFace / OpenAI packages (or nothing), while ``vlprompt.datasets`` and ``vlprompt.clip`` give ours.
- The console scripts ``vlprompt-train`` and ``vlprompt-parse`` run from a temporary directory.
- A wheel holds only the top-level names ``vlprompt`` and ``dassl``.
"""
from __future__ import annotations

import importlib.util
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO_ROOT, repo_path

CLASH_PROBE = """
import importlib.util, os, sys
if importlib.util.find_spec("vlprompt") is None:  # not installed: the checkout goes last, as train.py puts it
    sys.path.append(sys.argv[1])
repo = os.path.realpath(sys.argv[1])
hf = importlib.util.find_spec("datasets")
if hf is not None:
    import datasets
    assert not os.path.realpath(datasets.__file__).startswith(os.path.join(repo, "datasets")), datasets.__file__
    assert hasattr(datasets, "load_dataset"), "not HuggingFace datasets"
openai_clip = importlib.util.find_spec("clip")
if openai_clip is not None:
    import clip
    assert not os.path.realpath(clip.__file__).startswith(os.path.join(repo, "clip")), clip.__file__
from dassl.data.datasets import DATASET_REGISTRY
import vlprompt.datasets
import vlprompt.trainers
from vlprompt import clip as our_clip
assert os.path.realpath(vlprompt.datasets.__file__).startswith(repo)
assert {"Synthetic", "COCOLT", "DescribableTextures"} <= set(DATASET_REGISTRY.registered_names())
assert our_clip.tokenize("a photo").shape == (1, 77)
print("hf" if hf is not None else "no-hf", "openai-clip" if openai_clip is not None else "no-openai-clip")
"""


def _outside_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_no_clash_with_huggingface_datasets_or_openai_clip(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CLASH_PROBE, REPO_ROOT], cwd=tmp_path, env=_outside_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if importlib.util.find_spec("datasets") is not None:  # the dev extra installs it, so CI always checks it
        assert proc.stdout.split()[0] == "hf"


def _console_script(name: str) -> str:
    path = osp.join(osp.dirname(sys.executable), name)
    assert osp.isfile(path), f"{name} is not installed next to {sys.executable}; run scripts/install.sh"
    return path


def test_console_scripts_run_from_any_directory(tmp_path, data_root):
    out = tmp_path / "zs"
    argv = [_console_script("vlprompt-train"), "--root", data_root, "--trainer", "ZeroshotCLIP",
            "--backbone", "tiny-vit", "--dataset-config-file", repo_path("configs/datasets/synthetic.yaml"),
            "--config-file", repo_path("configs/trainers/ZeroshotCLIP/tiny_vit.yaml"), "--output-dir", str(out),
            "--eval-only"]
    proc = subprocess.run(argv, cwd=tmp_path, env=dict(_outside_env(), VLPROMPT_SKIP_ENV_INFO="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "* accuracy:" in open(out / "log.txt").read()
    parsed = subprocess.run([_console_script("vlprompt-parse"), str(tmp_path), "--table", "--test-log"],
                            cwd=tmp_path, env=_outside_env(), capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0 and "ZeroshotCLIP" in parsed.stdout, parsed.stderr


def test_wheel_holds_only_vlprompt_and_dassl(tmp_path):
    source = tmp_path / "src"
    for name in ("vlprompt", "dassl", "clip", "datasets", "trainers"):
        shutil.copytree(repo_path(name), source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(repo_path(name), source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("vlprompt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"vlprompt", "dassl"}, top
    assert "vlprompt/datasets/lists/lmpt/coco/coco_lt_train.txt" in names  # the shipped LT lists
    assert "vlprompt/trainers/common/prompt_trainer.py" in names and "vlprompt/trainers/dpt/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "vlprompt-train = vlprompt.train:cli" in entry_points
    assert "vlprompt-parse = vlprompt.parse_test_res:cli" in entry_points


@pytest.mark.parametrize("script", ["train.py", "parse_test_res.py"])
def test_root_scripts_keep_the_repository_off_the_front_of_the_path(script):
    """``python train.py`` from the repository root: the root (first on the path, as the script's folder) moves
    last, so `import datasets` inside any library still means HuggingFace's, and `vlprompt` is found."""
    if importlib.util.find_spec("datasets") is None:
        pytest.skip("HuggingFace datasets is not installed (the dev extra installs it)")
    probe = (f"import runpy, sys; runpy.run_path({script!r}, run_name='probe'); "
             "import datasets, vlprompt.datasets; "
             "assert hasattr(datasets, 'load_dataset'), datasets.__file__; print(datasets.__file__)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=_outside_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not osp.realpath(proc.stdout.strip()).startswith(osp.join(osp.realpath(REPO_ROOT), "datasets"))
