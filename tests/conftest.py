"""Shared test setup: the repo root on sys.path (last), quiet env dump, and a session data root."""
import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository root goes last on the path (as train.py does): `vlprompt` and `dassl` are found there,
# while `import datasets` / `import clip` (HuggingFace, openai-clip, or inside transformers) never reach
# our top-level folders.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO_ROOT] + [REPO_ROOT]

# The PyTorch environment report takes seconds per run; tests never read it.
os.environ.setdefault("VLPROMPT_SKIP_ENV_INFO", "1")
# One torch thread per test process: the suite runs on 2 xdist workers (pytest.ini), and on a 2-core
# machine competing OpenMP threads slow the tiny models down by up to 10x. Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# Caches (frozen image features, ...) go to a fresh folder, never the user's ~/.cache.
os.environ["VLPROMPT_CACHE"] = tempfile.mkdtemp(prefix="vlprompt-test-cache-")
atexit.register(shutil.rmtree, os.environ["VLPROMPT_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    """One DATASET.ROOT for the session, so the synthetic dataset is drawn once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def pretrained_tiny_dir(tmp_path_factory) -> str:
    """A folder holding ``tiny-vit-synthetic.pth`` pre-trained with the demo's recipe (about 3 s)."""
    from vlprompt.clip.pretrain_tiny import PretrainConfig, pretrain_tiny_clip, save_state_dict
    from vlprompt.trainers.common.clip_loading import PRETRAINED_TINY

    folder = tmp_path_factory.mktemp("pretrained")
    state_dict, _ = pretrain_tiny_clip(PretrainConfig(arch="vit"))
    save_state_dict(state_dict, str(folder / PRETRAINED_TINY["tiny-vit-synthetic"][0]))
    return str(folder)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> str:
    """A folder shared by all xdist workers of this session (the registry tests' reference runs live there)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # every worker's basetemp is a child of the session's
    folder = os.path.join(str(base), "shared")
    os.makedirs(folder, exist_ok=True)
    return folder
