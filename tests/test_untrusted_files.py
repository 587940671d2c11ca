"""Files from elsewhere never run code: pickles, checkpoints and CLIP archives.

Each hostile file here would create a marker file if any of its code ran (``os.system("touch ...")`` through
``__reduce__``).  Checked: a few-shot cache and a CIFAR batch are refused when a real ``train.py`` run reads
them (exit code 1, exactly one stderr line naming the file, no marker); the restricted unpickler still reads
every legitimate kind of pickle (Datum caches, Python-2 CIFAR batches, NumPy arrays of every protocol);
``load_checkpoint`` refuses a checkpoint holding a custom object or a corrupt file with one line and reads our
own checkpoints; a local TorchScript archive is refused (before ``torch.jit.load``) unless trusted or a released
checkpoint; a hostile feature-cache entry is recomputed.
"""
from __future__ import annotations

import collections
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from dassl.config import extend_cfg, get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import load_checkpoint, save_checkpoint
from dassl.utils.safe_pickle import UnreadablePickleError, UnsafePickleError, load_pickle, loads_pickle
from dataset_fixtures import write_cifar10
from helpers import REPO_ROOT, SYNTHETIC_YAML as SYNTHETIC_CONFIG, TOY_CONFIG, run_train
from vlprompt.datasets.splits import fewshot_cache_path, load_datum_pickle

SHOTS, SEED = 2, 1
SYNTHETIC_OPTS = ["DATASET.SYNTHETIC.NUM_CLASSES", "3", "DATASET.SYNTHETIC.NUM_TRAIN", "4",
                  "DATASET.SYNTHETIC.NUM_VAL", "2", "DATASET.SYNTHETIC.NUM_TEST", "2"]


class TouchMarker:
    """Unpickling this runs ``touch <marker>``: the proof that a loader executed code from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CustomObject:
    """A harmless non-tensor class: still not something a checkpoint may hold."""


def _hostile_pickle(path: str, marker: str, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    with open(path, "wb") as f:
        pickle.dump({"train": [TouchMarker(marker)], "val": []}, f, protocol=protocol)


def _run_train(args, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, VLPROMPT_SKIP_ENV_INFO="1")
    env.pop("VLPROMPT_DEBUG", None)
    return subprocess.run([sys.executable, osp.join(REPO_ROOT, "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_refusal(proc: subprocess.CompletedProcess, path: str, marker: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and path in lines[0] and "posix.system" in lines[0], lines[0]
    assert not osp.exists(marker), "code stored in the file ran"


# ----------------------------------------------------------------------------- real runs of train.py


def test_hostile_fewshot_cache_is_refused_by_a_real_run(tmp_path):
    """train.py on the synthetic dataset with a planted few-shot cache: exit 1, one line, no marker."""
    root, marker = str(tmp_path / "data"), str(tmp_path / "marker")
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.ROOT, cfg.DATASET.NAME = root, "Synthetic"
    cfg.merge_from_list(SYNTHETIC_OPTS)
    dataset_dir = DATASET_REGISTRY.get("Synthetic")(cfg).dataset_dir  # draws the images once
    cache = fewshot_cache_path(dataset_dir, SHOTS, SEED)
    os.makedirs(osp.dirname(cache))
    _hostile_pickle(cache, marker)
    args = ["--root", root, "--seed", str(SEED), "--trainer", "Vanilla", "--dataset-config-file", SYNTHETIC_CONFIG,
            "--config-file", TOY_CONFIG, "--output-dir", str(tmp_path / "out"),
            "DATASET.NUM_SHOTS", str(SHOTS), "OPTIM.MAX_EPOCH", "1", *SYNTHETIC_OPTS]
    proc = _run_train(args, cwd=str(tmp_path))
    _assert_one_line_refusal(proc, cache, marker)


def test_hostile_cifar_batch_is_refused_by_a_real_run(tmp_path, capsys, monkeypatch):
    """train.py (in this process) on CIFAR-10-LT whose data_batch_1 is hostile (a Python-2 protocol pickle):
    exit 1, one line, no marker."""
    root, marker = tmp_path / "data", str(tmp_path / "marker")
    folder = root / "cifar-10-python" / "cifar-10-batches-py"
    write_cifar10(str(folder), per_batch=20, n_test=10)
    batch = str(folder / "data_batch_1")
    _hostile_pickle(batch, marker, protocol=2)
    args = ["--root", str(root), "--seed", "1", "--trainer", "Vanilla",
            "--dataset-config-file", osp.join(REPO_ROOT, "configs/datasets/cifar10_lt.yaml"),
            "--config-file", TOY_CONFIG, "--output-dir", str(tmp_path / "out"), "OPTIM.MAX_EPOCH", "1"]
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    capsys.readouterr()
    code = run_train(args)
    _assert_one_line_refusal(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), batch, marker)


# ----------------------------------------------------------------------------- the restricted unpickler


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickler_refuses_before_running_anything(tmp_path, protocol):
    """Every protocol: the refusal names file and global, is one line, and the marker stays absent."""
    path, marker = str(tmp_path / "evil.pkl"), str(tmp_path / "marker")
    _hostile_pickle(path, marker, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to unpickle posix.system") and "\n" not in message
    assert not osp.exists(marker)
    assert isinstance(info.value, ValueError)  # train.py's user-error family


def test_unpickler_refuses_other_globals_without_importing_them(tmp_path):
    """A harmless class outside the allow-list is refused too; a module it names is never imported."""
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle .*CustomObject"):
        loads_pickle(pickle.dumps(CustomObject()), source="mem")
    fake = b"\x80\x02cnot_a_real_module_xyz\nthing\nq\x00."
    with pytest.raises(UnsafePickleError, match="not_a_real_module_xyz.thing"):
        loads_pickle(fake, source="mem")
    assert "not_a_real_module_xyz" not in sys.modules


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_reads_legitimate_data(protocol):
    """Datum lists, OrderedDict, sets, bytes, NumPy arrays and scalars round-trip unchanged."""
    datum = Datum(impath="/x/a.jpg", label=3, classname="cat", check_file=False)
    value = {"train": [datum], "od": collections.OrderedDict(a=1), "s": {1, 2}, "b": b"\x00\xff",
             "arr": np.arange(12, dtype=np.uint8).reshape(3, 4), "f": np.float32(2.5), "t": (1, 2.0, None)}
    back = loads_pickle(pickle.dumps(value, protocol=protocol))
    assert back["train"] == [datum] and type(back["od"]) is collections.OrderedDict
    assert back["s"] == {1, 2} and back["b"] == b"\x00\xff" and back["t"] == (1, 2.0, None)
    assert np.array_equal(back["arr"], value["arr"]) and back["arr"].dtype == np.uint8 and back["f"] == 2.5


def test_cifar_python2_batches_still_load(tmp_path):
    """The CIFAR fixture (protocol 2, bytes keys) loads through the restricted reader."""
    write_cifar10(str(tmp_path), per_batch=20, n_test=10)
    batch = load_pickle(str(tmp_path / "data_batch_1"), encoding="bytes")
    assert batch[b"data"].shape == (20, 3072) and batch[b"data"].dtype == np.uint8


def test_truncated_or_wrong_shaped_pickles_are_one_line(tmp_path):
    """A truncated pickle and a pickle of the wrong shape for a Datum cache: one line naming the file."""
    path = tmp_path / "cache.pkl"
    path.write_bytes(pickle.dumps({"train": [1, 2, 3]})[:-5])
    with pytest.raises(UnreadablePickleError, match=f"{path}: not a readable pickle"):
        load_pickle(str(path))
    path.write_bytes(pickle.dumps({"train": [1, 2, 3]}))
    with pytest.raises(ValueError, match=f"{path}: entry 'train' is not a list of Datum"):
        load_datum_pickle(str(path), str(tmp_path))


# ----------------------------------------------------------------------------- checkpoints


def test_load_checkpoint_refuses_custom_objects_with_one_line(tmp_path):
    """A custom class or a hostile __reduce__ in a checkpoint: refused, one line naming file and global."""
    path, marker = str(tmp_path / "model.pth.tar-1"), str(tmp_path / "marker")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1, "extra": CustomObject()}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: refused to load ") and "CustomObject" in str(info.value)
    assert "\n" not in str(info.value)
    torch.save({"state_dict": {}, "epoch": 1, "x": TouchMarker(marker)}, path)
    with pytest.raises(UnsafePickleError, match="posix.system"):
        load_checkpoint(path)
    assert not osp.exists(marker)


def test_load_checkpoint_corrupt_file_is_one_line_and_own_files_load(tmp_path):
    """A truncated checkpoint is one UnreadablePickleError line; our save_checkpoint output loads."""
    state = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 2, "optimizer": None, "val_result": None}
    saved = save_checkpoint(state, str(tmp_path))
    loaded = load_checkpoint(saved)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0)) and loaded["epoch"] == 2
    broken = tmp_path / "broken.pth"
    broken.write_bytes(open(saved, "rb").read()[:200])
    with pytest.raises(UnreadablePickleError, match=f"{broken}: not a readable PyTorch file") as info:
        load_checkpoint(str(broken))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- CLIP archives


def _trace_tiny_archive(path: str) -> None:
    """A traced tiny CLIP: a TorchScript archive no released checkpoint has the hash of."""
    from vlprompt.clip.model import build_model
    from vlprompt.clip.tiny import tiny_state_dict

    model = build_model(tiny_state_dict("vit")).float()
    image = torch.randn(1, 3, model.visual.input_resolution, model.visual.input_resolution)
    torch.jit.trace_module(model, {"encode_image": (image,)}, check_trace=False).save(path)


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
def test_unknown_local_archive_is_refused_unless_trusted(tmp_path, monkeypatch):
    """load_clip_to_cpu(path): refused in one line before torch.jit.load; loads with trust or a known hash."""
    from vlprompt.clip import clip as clip_module
    from vlprompt.trainers.common.clip_loading import load_clip_to_cpu

    path = str(tmp_path / "my-clip.pt")
    _trace_tiny_archive(path)
    assert clip_module.is_torchscript_archive(path)
    real_jit_load = torch.jit.load

    def must_not_open(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on an untrusted archive")

    monkeypatch.setattr(torch.jit, "load", must_not_open)
    with pytest.raises(clip_module.UntrustedArchiveError) as info:
        load_clip_to_cpu(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a TorchScript archive") and "TRUST_LOCAL_ARCHIVE" in message
    assert "\n" not in message and isinstance(info.value, ValueError)
    monkeypatch.setattr(torch.jit, "load", real_jit_load)
    assert load_clip_to_cpu(path, trust_local_archive=True).visual.input_resolution == 32
    monkeypatch.setattr(clip_module, "known_checkpoint_hashes", lambda: {clip_module._sha256(path): "Mine"})
    assert load_clip_to_cpu(path).visual.input_resolution == 32  # a local copy of a known checkpoint


def test_plain_state_dict_with_objects_is_refused(tmp_path):
    """A torch.save state dict is read weights-only: a hostile object in it is refused, nothing runs."""
    from vlprompt import clip

    path, marker = str(tmp_path / "weights.pth"), str(tmp_path / "marker")
    torch.save({"text_projection": torch.zeros(2, 2), "hook": TouchMarker(marker)}, path)
    assert not clip.clip.is_torchscript_archive(path)
    with pytest.raises(UnsafePickleError, match=f"{path}: refused to load posix.system"):
        clip.load(path, device="cpu")
    assert not osp.exists(marker)


def test_trust_key_defaults_to_false():
    """MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE is registered with the config, off by default."""
    from vlprompt.trainers.config import get_cfg

    assert get_cfg().MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE is False


# ----------------------------------------------------------------------------- feature cache


def test_hostile_feature_cache_entry_is_recomputed(tmp_path, caplog):
    """A cache entry holding a hostile object is never trusted: one warning, recomputed, no marker."""
    from vlprompt.trainers.common.feature_cache import FeatureCache

    cache, marker = FeatureCache(str(tmp_path)), str(tmp_path / "marker")
    torch.save({"features": TouchMarker(marker), "labels": torch.zeros(1)}, cache.path("k"))
    features, _ = cache.get_or_compute("k", lambda: (torch.ones(2, 3), torch.zeros(2)))
    assert torch.equal(features, torch.ones(2, 3)) and cache.misses == 1 and not osp.exists(marker)
    assert "refused to load posix.system" in caplog.text
