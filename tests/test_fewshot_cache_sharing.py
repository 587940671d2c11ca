"""Few-shot caches in CoOp's exact format, so a data root stays usable by CoOp, CoCoOp, MaPLe and PromptSRC.

Checked: the cache we write is the dict upstream writes for that seed (same items, same ``Datum`` attributes,
absolute paths); a stand-in for the upstream reader, run in a separate process from another working
directory, unpickles it with the real ``dassl.data.datasets.base_dataset.Datum`` and applies upstream's rule
(every ``impath`` an existing absolute file), and our reader in another process gives the same items; an older
cache with relative paths and a cache copied from another data root are both read (the latter with one log
line) and rewritten in CoOp's format; ImageNet's ``preprocessed.pkl`` is CoOp's format too.
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import pickle
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from typing import List, Sequence, Tuple

from dassl.config import extend_cfg, get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import set_random_seed
from dataset_fixtures import make_dtd, make_imagenet
from vlprompt import datasets as _registers_datasets  # noqa: F401
from vlprompt.datasets.splits import fewshot_cache_path, read_split

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHOTS, SEED = 2, 3
UPSTREAM_DATUM_ATTRS = ["_impath", "_label", "_domain", "_classname"]  # Dassl's Datum.__init__, in order

# Upstream's reader, as CoOp runs it: plain pickle.load with Dassl importable, then its Datum rule.
STAND_IN_READER = """
import json, os.path as osp, pickle, sys
sys.path.insert(0, {repo!r})
from dassl.data.datasets.base_dataset import Datum  # the class the pickle names
with open({cache!r}, "rb") as f:
    data = pickle.load(f)
out = {{}}
for split, items in data.items():
    for d in items:
        assert type(d) is Datum, type(d)
        assert osp.isabs(d.impath) and osp.isfile(d.impath), d.impath  # upstream Datum asserts the file exists
        Datum(impath=d.impath, label=d.label, domain=d.domain, classname=d.classname)  # upstream's constructor
    out[split] = [[d.impath, d.label, d.domain, d.classname] for d in items]
print(json.dumps(out))
"""

# Our reader: the dataset class as train.py builds it, in a fresh process.
OUR_READER = """
import json, sys
sys.path.append({repo!r})
from dassl.config import extend_cfg, get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import set_random_seed
import vlprompt.datasets
cfg = extend_cfg(get_cfg_default())
cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = {root!r}, "DescribableTextures", {shots}, {seed}
set_random_seed(12345)  # a cache hit must not depend on the RNG
ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
print(json.dumps({{"train": [[d.impath, d.label, d.domain, d.classname] for d in ds.train_x],
                  "val": [[d.impath, d.label, d.domain, d.classname] for d in ds.val]}}))
"""


def _build(root: str, name: str, shots: int = SHOTS, seed: int = SEED):
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    set_random_seed(seed)  # as train.py does before building the dataset
    return DATASET_REGISTRY.get(name)(cfg)


def _rows(items: Sequence[Datum]) -> List[list]:
    return [[d.impath, d.label, d.domain, d.classname] for d in items]


def _run(script: str, cwd: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _upstream_fewshot(items: Sequence[Datum], k: int) -> List[Datum]:
    """Dassl's generate_fewshot_dataset, re-written here: labels in first-seen order, random.sample per label."""
    by_label = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    out = []
    for group in by_label.values():
        out.extend(random.sample(group, k) if len(group) >= k else group)
    return out


def _dtd_cache(root: str) -> Tuple[object, str]:
    make_dtd(root, n=10)
    _build(root, "DescribableTextures", shots=-1)  # writes the split JSON (no JSON in the miniature)
    ds = _build(root, "DescribableTextures")
    return ds, fewshot_cache_path(ds.dataset_dir, SHOTS, SEED)


def test_cache_is_what_upstream_writes_for_the_seed(tmp_path):
    """Same dict, items, order and Datum attributes as CoOp's flow (seed, read split, K-shot train, min(K,4) val)."""
    ds, cache = _dtd_cache(str(tmp_path))
    assert cache == osp.join(ds.dataset_dir, "split_fewshot", f"shot_{SHOTS}-seed_{SEED}.pkl")
    random.seed(SEED)
    train, val, _ = read_split(osp.join(ds.dataset_dir, "split_zhou_DescribableTextures.json"),
                               osp.join(ds.dataset_dir, "images"))
    expected = {"train": _upstream_fewshot(train, SHOTS), "val": _upstream_fewshot(val, min(SHOTS, 4))}
    with open(cache, "rb") as f:
        stored = pickle.load(f)
    assert list(stored) == ["train", "val"]
    for split in ("train", "val"):
        assert _rows(stored[split]) == _rows(expected[split])
        assert all(list(vars(d)) == UPSTREAM_DATUM_ATTRS for d in stored[split])
        assert all(type(d.label) is int and osp.isabs(d.impath) for d in stored[split])


def test_cache_is_read_by_upstream_rule_and_ours_in_other_processes(tmp_path):
    """The stand-in upstream reader and our dataset, each in a subprocess started elsewhere, see the same items."""
    root = str(tmp_path / "data")
    ds, cache = _dtd_cache(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    upstream = _run(STAND_IN_READER.format(repo=REPO_ROOT, cache=cache), cwd=str(elsewhere))
    ours = _run(OUR_READER.format(repo=REPO_ROOT, root=root, shots=SHOTS, seed=SEED), cwd=str(elsewhere))
    assert upstream == ours == {"train": _rows(ds.train_x), "val": _rows(ds.val)}
    assert len(ours["train"]) == 5 * SHOTS and len(ours["val"]) == 5 * SHOTS


def test_older_relative_path_cache_is_read_and_upgraded(tmp_path):
    """A cache with paths relative to the dataset folder (older files) gives the same absolute items, and is
    rewritten in CoOp's format so other codebases can read it."""
    ds, cache = _dtd_cache(str(tmp_path))
    with open(cache, "rb") as f:
        stored = pickle.load(f)
    for items in stored.values():
        for d in items:
            d._impath = osp.relpath(d.impath, ds.dataset_dir)
    with open(cache, "wb") as f:
        pickle.dump(stored, f)
    again = _build(str(tmp_path), "DescribableTextures")
    assert _rows(again.train_x) == _rows(ds.train_x) and _rows(again.val) == _rows(ds.val)
    with open(cache, "rb") as f:
        assert all(osp.isabs(d.impath) for items in pickle.load(f).values() for d in items)


def test_cache_copied_from_another_root_is_rerooted_with_one_log_line(tmp_path, caplog):
    """Copying the dataset folder (cache included) elsewhere: paths follow the new root; one line says so."""
    ds, _ = _dtd_cache(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # the old paths no longer exist
    with caplog.at_level(logging.INFO, logger="vlprompt.datasets.splits"):
        moved = _build(str(tmp_path / "b"), "DescribableTextures")
    old_dir, new_dir = ds.dataset_dir, str(tmp_path / "b" / "dtd")
    assert _rows(moved.train_x) == [[p.replace(old_dir, new_dir, 1), *rest] for p, *rest in _rows(ds.train_x)]
    assert all(osp.isfile(d.impath) for d in moved.train_x + moved.val)
    lines = [r.getMessage() for r in caplog.records if "Re-rooted" in r.getMessage()]
    assert len(lines) == 1 and old_dir in lines[0] and new_dir in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlprompt.datasets.splits"):
        _build(str(tmp_path / "b"), "DescribableTextures")  # rewritten: nothing left to re-root
    assert not [r for r in caplog.records if "Re-rooted" in r.getMessage()]


def test_imagenet_preprocessed_pickle_is_coop_format(tmp_path):
    """preprocessed.pkl: {"train", "test"} of upstream-shaped Datums with absolute, existing paths."""
    mini = make_imagenet(str(tmp_path))
    ds = _build(str(tmp_path), "ImageNet", shots=-1)
    with open(osp.join(mini.dataset_dir, "preprocessed.pkl"), "rb") as f:
        stored = pickle.load(f)
    assert list(stored) == ["train", "test"]
    assert _rows(stored["train"]) == _rows(ds.train_x) and _rows(stored["test"]) == _rows(ds.test)
    assert all(list(vars(d)) == UPSTREAM_DATUM_ATTRS and osp.isfile(d.impath) for d in stored["train"])
