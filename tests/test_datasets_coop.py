"""The CoOp suite, the ImageNet variants and Flowers102 on miniature on-disk copies.

Checks, per dataset: class names in label order, split sizes, the split JSON written in CoOp's
format and read back, few-shot sampling (K per class for train, min(K, 4) for val) and its
cache in CoOp's format (absolute paths; re-rooted when copied), base/new subsampling with relabelling.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import pickle
from collections import Counter

import pytest

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import set_random_seed
from dataset_fixtures import COOP_BUILDERS, FLOWERS102_NAMES, make_dtd, make_eurosat, make_imagenet, make_oxford_pets
from vlprompt.datasets.splits import fewshot_cache_path
from vlprompt.trainers.config import get_cfg

EVAL_ONLY = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
TRAINABLE = [n for n in COOP_BUILDERS if n not in EVAL_ONLY]
WITH_SPLIT_JSON = [n for n in TRAINABLE if n not in ("FGVCAircraft", "ImageNet", "Flowers102")]

_BASE_CFG = None


def build(root, name: str, shots: int = -1, seed: int = 1, subsample: str = "all", rng_seed: int = None):
    """Build ``name`` under ``root`` the way train.py does (global RNG seeded with SEED first)."""
    global _BASE_CFG
    if _BASE_CFG is None:
        _BASE_CFG = get_cfg()
    cfg = _BASE_CFG.clone()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    set_random_seed(seed if rng_seed is None else rng_seed)
    return DATASET_REGISTRY.get(name)(cfg)


def triples(items):
    return [(d.impath, d.label, d.classname) for d in items]


def per_class(items) -> Counter:
    return Counter(d.label for d in items)


@pytest.mark.parametrize("name", list(COOP_BUILDERS))
def test_classnames_labels_and_sizes(tmp_path, name):
    """Class names come out in the dataset's label order and every split has the expected size."""
    mini = COOP_BUILDERS[name](str(tmp_path))
    ds = build(tmp_path, name)
    assert ds.classnames == mini.classnames
    label_ids = mini.extra.get("labels", tuple(range(len(mini.classnames))))
    lab2cname = dict(zip(label_ids, mini.classnames))
    assert ds.num_classes == max(label_ids) + 1  # Dassl's count: max label + 1
    val = ds.val or []
    assert (len(ds.train_x), 0 if mini.eval_only else len(val), len(ds.test)) == mini.sizes
    for split in (ds.train_x, ds.val, ds.test) if not mini.eval_only else (ds.test,):
        assert set(per_class(split)) == set(label_ids)
        for item in split:
            assert item.classname == lab2cname[item.label]
            assert osp.isfile(item.impath) and item.impath.startswith(mini.dataset_dir)
    if mini.eval_only:
        assert ds.val is None and triples(ds.train_x) == triples(ds.test)


@pytest.mark.parametrize("name", WITH_SPLIT_JSON)
def test_split_json_written_in_coop_format_and_reread(tmp_path, name):
    """Without a split JSON one is built and saved as CoOp's [relpath, label, classname] lists;
    a second build reads it back instead of re-splitting (a different RNG state changes nothing)."""
    mini = COOP_BUILDERS[name](str(tmp_path))
    first = build(tmp_path, name, rng_seed=1)
    with open(mini.split_json) as f:
        split = json.load(f)
    assert set(split) == {"train", "val", "test"}
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == mini.sizes
    for relpath, label, classname in split["train"] + split["val"] + split["test"]:
        assert not osp.isabs(relpath) and isinstance(label, int) and classname == mini.classnames[label]
    second = build(tmp_path, name, rng_seed=12345)
    for a, b in ((first.train_x, second.train_x), (first.val, second.val), (first.test, second.test)):
        assert triples(a) == triples(b)


def test_existing_split_json_is_used_as_is(tmp_path):
    """A shipped split JSON decides the splits and class names (EuroSAT's real entry format)."""
    mini = make_eurosat(str(tmp_path))
    folders = sorted(os.listdir(osp.join(mini.dataset_dir, "2750")))
    split = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(folders):
        images = sorted(os.listdir(osp.join(mini.dataset_dir, "2750", folder)))
        for i, im in enumerate(images):
            key = "train" if i < 7 else "val" if i < 8 else "test"
            split[key].append([f"{folder}/{im}", label, mini.classnames[label]])
    split["train"][0][2] = "Annual Crop Land"  # the JSON's own class name string is kept
    with open(mini.split_json, "w") as f:
        json.dump(split, f, indent=4)
    ds = build(tmp_path, "EuroSAT")
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (35, 5, 10)
    assert ds.train_x[0].impath == osp.join(mini.dataset_dir, "2750", split["train"][0][0])


@pytest.mark.parametrize("name", TRAINABLE)
def test_fewshot_sampling_and_cache_round_trip(tmp_path, name):
    """K=2: two images per class in train, min(K, 4) in val (ImageNet: val is the full test);
    the cache stores CoOp's absolute paths and is re-read whatever the RNG state."""
    COOP_BUILDERS[name](str(tmp_path))
    full = build(tmp_path, name)
    few = build(tmp_path, name, shots=2, seed=1)
    assert per_class(few.train_x) == {c: min(2, n) for c, n in per_class(full.train_x).items()}
    assert {d.impath for d in few.train_x} <= {d.impath for d in full.train_x}
    if name == "ImageNet":
        assert triples(few.val) == triples(full.test)
    else:
        assert per_class(few.val) == {c: min(2, n) for c, n in per_class(full.val).items()}
        assert {d.impath for d in few.val} <= {d.impath for d in full.val}

    cache = fewshot_cache_path(few.dataset_dir, 2, 1)
    with open(cache, "rb") as f:
        stored = pickle.load(f)
    assert triples(stored["train"]) == triples(few.train_x)
    assert all(osp.isabs(d.impath) and osp.isfile(d.impath) for d in stored["train"])
    assert ("val" in stored) == (name != "ImageNet")
    again = build(tmp_path, name, shots=2, seed=1, rng_seed=98765)
    assert triples(again.train_x) == triples(few.train_x)
    assert triples(again.val) == triples(few.val)
    other_seed = build(tmp_path, name, shots=2, seed=2)
    assert osp.exists(fewshot_cache_path(few.dataset_dir, 2, 2))
    assert per_class(other_seed.train_x) == per_class(few.train_x)


def test_fewshot_val_is_capped_at_four(tmp_path):
    """K=8 with 15 train / 6 val images per class: 8 train and 4 (not 6) val per class."""
    make_dtd(str(tmp_path), n=30)
    ds = build(tmp_path, "DescribableTextures", shots=8)
    assert set(per_class(ds.train_x).values()) == {8}
    assert set(per_class(ds.val).values()) == {4}
    assert len(ds.test) == 5 * 9


def test_fewshot_reads_reference_absolute_path_pickle(tmp_path):
    """A CoOp pickle with another machine's absolute paths is re-rooted under this DATASET.ROOT."""
    make_oxford_pets(str(tmp_path))
    few = build(tmp_path, "OxfordPets", shots=2)
    cache = fewshot_cache_path(few.dataset_dir, 2, 1)
    with open(cache, "rb") as f:
        stored = pickle.load(f)
    for items in stored.values():
        for d in items:
            d._impath = d.impath.replace(few.dataset_dir, "/home/someone/DATA/oxford_pets", 1)
    with open(cache, "wb") as f:
        pickle.dump(stored, f)
    again = build(tmp_path, "OxfordPets", shots=2, rng_seed=5)
    assert triples(again.train_x) == triples(few.train_x)
    assert all(osp.isfile(d.impath) for d in again.train_x + again.val)


@pytest.mark.parametrize("name", TRAINABLE)
def test_base_new_subsampling_relabels(tmp_path, name):
    """base keeps the first ceil(n/2) sorted labels, new the rest; both are relabelled 0..m-1 in
    every split and keep each image's class name."""
    COOP_BUILDERS[name](str(tmp_path))
    full = build(tmp_path, name)
    labels = sorted(per_class(full.train_x))
    m = math.ceil(len(labels) / 2)
    for mode, kept in (("base", labels[:m]), ("new", labels[m:])):
        ds = build(tmp_path, name, subsample=mode)
        assert ds.classnames == [full.lab2cname[c] for c in kept]
        for full_split, split in ((full.train_x, ds.train_x), (full.val, ds.val), (full.test, ds.test)):
            expected = [(d.impath, kept.index(d.label), d.classname) for d in full_split if d.label in kept]
            assert triples(split) == expected
    if name == "Flowers102":  # the notebook's protocol: base = labels 0-50, novel = 51-101
        assert build(tmp_path, name, subsample="base").classnames == FLOWERS102_NAMES[:3]
        assert build(tmp_path, name, subsample="new").classnames == FLOWERS102_NAMES[3:]


def test_imagenet_listing_sorted_and_cached(tmp_path):
    """ImageNet lists images sorted inside each wnid folder and caches the scan in
    preprocessed.pkl with CoOp's absolute paths; a later build reads the cache, not the folders."""
    mini = make_imagenet(str(tmp_path))
    ds = build(tmp_path, "ImageNet")
    for label in range(5):
        paths = [d.impath for d in ds.train_x if d.label == label]
        assert paths == sorted(paths) and len(paths) == 6
    with open(osp.join(mini.dataset_dir, "preprocessed.pkl"), "rb") as f:
        stored = pickle.load(f)
    assert set(stored) == {"train", "test"}
    assert all(osp.isabs(d.impath) and osp.isfile(d.impath) for d in stored["train"] + stored["test"])
    open(osp.join(mini.dataset_dir, "images", "train", "n01440764", "zzz_new.JPEG"), "wb").close()
    assert len(build(tmp_path, "ImageNet").train_x) == 30


def test_eval_only_variants_ignore_fewshot_and_subsample(tmp_path):
    """ImageNet-A: 200-way labels in sorted wnid order; NUM_SHOTS / SUBSAMPLE_CLASSES are ignored."""
    mini = COOP_BUILDERS["ImageNetA"](str(tmp_path))
    ds = build(tmp_path, "ImageNetA", shots=2, subsample="base")
    assert ds.classnames == mini.classnames and len(ds.test) == 9
    assert not osp.exists(osp.join(mini.dataset_dir, "split_fewshot"))
