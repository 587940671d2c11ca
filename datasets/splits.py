"""Split files, few-shot caches and base/new subsampling shared by every CoOp-style dataset.

Formats follow CoOp (../shared/specs/coop_family.md §7.1):
- ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}``.
- ``split_fewshot/shot_{K}-seed_{S}.pkl``: ``{"train": [Datum], "val": [Datum]}``. We store image
  paths relative to the dataset folder so the cache is portable; the reference's pickles hold
  absolute paths and are read too (a path that no longer exists is re-rooted by its tail).
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
import pickle
import random
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from dassl.data.datasets import Datum, DatasetBase
from dassl.utils import listdir_nohidden, mkdir_if_missing, read_json, write_json

logger = logging.getLogger(__name__)

SUBSAMPLE_CHOICES = ("all", "base", "new")
DATASETS_DOC = "DATASETS.md"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing; the message names it and points at DATASETS.md."""


def dataset_root(cfg) -> str:
    """``DATASET.ROOT`` as an absolute path (``~`` expanded), as CoOp's readers use it."""
    return osp.abspath(osp.expanduser(cfg.DATASET.ROOT))


def require_path(path: str, dataset: str, what: str = "folder") -> str:
    """Return ``path`` if it exists, else raise one clear line naming it."""
    if not osp.exists(path):
        anchor = dataset.lower()
        raise DatasetNotFoundError(
            f"{dataset}: {what} not found at {path} — see {DATASETS_DOC}#{anchor} for the expected layout "
            f"(or pass --root / DATASET.ROOT)"
        )
    return path


# ----------------------------------------------------------------------------- split JSON


def read_split(filepath: str, path_prefix: str) -> Tuple[List[Datum], List[Datum], List[Datum]]:
    """Read a CoOp split JSON into (train, val, test) lists of ``Datum`` under ``path_prefix``."""
    logger.info(f"Reading split from {filepath}")
    split = read_json(filepath)

    def _convert(items) -> List[Datum]:
        return [Datum(impath=osp.join(path_prefix, impath), label=int(label), classname=classname)
                for impath, label, classname in items]

    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


def save_split(train, val, test, filepath: str, path_prefix: str) -> None:
    """Write (train, val, test) as a CoOp split JSON with paths relative to ``path_prefix``."""

    def _extract(items) -> list:
        out = []
        for item in items:
            impath = item.impath.replace(path_prefix, "", 1)
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, item.label, item.classname))
        return out

    write_json({"train": _extract(train), "val": _extract(val), "test": _extract(test)}, filepath)
    logger.info(f"Saved split to {filepath}")


def split_trainval(trainval: Sequence[Datum], p_val: float = 0.2) -> Tuple[List[Datum], List[Datum]]:
    """Per label, hold out round(n·p_val) items (shuffled with Python ``random``) as val."""
    p_trn = 1 - p_val
    logger.info(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    tracker: Dict[int, List[int]] = OrderedDict()
    for idx, item in enumerate(trainval):
        tracker.setdefault(item.label, []).append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise ValueError(f"label {label} has too few images ({len(idxs)}) to hold out a val split")
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(
    image_dir: str,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: Iterable[str] = (),
    new_cnames: Optional[Dict[str, str]] = None,
) -> Tuple[List[Datum], List[Datum], List[Datum]]:
    """One folder per class → 50/20/30 train/val/test per class (DTD's ``read_and_split_data``)."""
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in set(ignored))
    p_tst = 1 - p_trn - p_val
    logger.info(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    def _collate(ims, label, classname):
        return [Datum(impath=im, label=label, classname=classname) for im in ims]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        # Sorted so a split built here is the same on every machine (CoOp used the filesystem
        # order; its shipped split JSONs make that irrelevant whenever they exist).
        images = [osp.join(category_dir, im) for im in listdir_nohidden(category_dir, sort=True)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if min(n_train, n_val, n_test) <= 0:
            raise ValueError(f"class folder {category_dir} has too few images ({n_total}) for a 50/20/30 split")
        classname = new_cnames.get(category, category) if new_cnames else category
        train.extend(_collate(images[:n_train], label, classname))
        val.extend(_collate(images[n_train:n_train + n_val], label, classname))
        test.extend(_collate(images[n_train + n_val:], label, classname))
    return train, val, test


# ----------------------------------------------------------------------------- few-shot cache


def fewshot_cache_path(dataset_dir: str, num_shots: int, seed: int) -> str:
    return osp.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.pkl")


def _to_relative(items: Sequence[Datum], root: str) -> List[Datum]:
    out = []
    for item in items:
        rel = osp.relpath(item.impath, root) if osp.isabs(item.impath) else item.impath
        clone = Datum.__new__(Datum)
        clone.__dict__.update(item.__dict__)
        clone._impath = rel
        out.append(clone)
    return out


def _reroot(items: Sequence[Datum], root: str) -> List[Datum]:
    """Make cached paths absolute under ``root``; re-root absolute paths from another machine."""
    base = osp.basename(osp.normpath(root))
    out = []
    for item in items:
        path = item.impath
        if not osp.isabs(path):
            path = osp.join(root, path)
        elif not osp.exists(path):
            # Reference pickles store absolute paths of the machine that wrote them: keep the
            # part after the dataset folder name and put it under this machine's folder.
            parts = path.split(os.sep)
            if base in parts:
                path = osp.join(root, *parts[len(parts) - parts[::-1].index(base):])
        clone = Datum.__new__(Datum)
        clone.__dict__.update(item.__dict__)
        clone._impath = path
        out.append(clone)
    return out


def save_datum_pickle(data: Dict[str, Sequence[Datum]], path: str, root: str) -> None:
    """Pickle ``{split: [Datum]}`` with image paths relative to ``root`` (atomic write)."""
    portable = {key: _to_relative(items, root) for key, items in data.items()}
    mkdir_if_missing(osp.dirname(path))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(portable, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_datum_pickle(path: str, root: str) -> Dict[str, List[Datum]]:
    """Read a pickle written by ``save_datum_pickle`` or by the reference (absolute paths)."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    return {key: _reroot(items, root) if items is not None else None for key, items in data.items()}


def load_or_create_fewshot(
    dataset: DatasetBase,
    dataset_dir: str,
    num_shots: int,
    seed: int,
    train: List[Datum],
    val: Optional[List[Datum]] = None,
) -> Tuple[List[Datum], Optional[List[Datum]]]:
    """K shots per class for train and min(K, 4) for val, cached per (K, seed).

    The sampling order (train first, then val) is the reference's, so with the same seed and
    file listing the subsets equal CoOp's.
    """
    if num_shots < 1:
        return train, val
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    if osp.exists(path):
        logger.info(f"Loading preprocessed few-shot data from {path}")
        with open(path, "rb") as f:
            data = pickle.load(f)
        train = _reroot(data["train"], dataset_dir)
        val = _reroot(data["val"], dataset_dir) if data.get("val") is not None else val
        return train, val
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": _to_relative(train, dataset_dir)}
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = _to_relative(val, dataset_dir)
    logger.info(f"Saving preprocessed few-shot data to {path}")
    mkdir_if_missing(osp.dirname(path))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return train, val


# ----------------------------------------------------------------------------- base / new


def subsample_classes(*splits: Sequence[Datum], subsample: str = "all") -> List[List[Datum]]:
    """Keep the first (``base``) or second (``new``) half of the train labels and relabel 0..m-1.

    Labels are the sorted set found in the first split; base gets ceil(n/2) of them.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"DATASET.SUBSAMPLE_CLASSES={subsample!r}; choose one of {', '.join(SUBSAMPLE_CHOICES)}")
    if subsample == "all":
        return list(splits)
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    logger.info(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {old: new for new, old in enumerate(selected)}
    output = []
    for split in splits:
        kept = []
        for item in split:
            if item.label not in relabeler:
                continue
            clone = Datum.__new__(Datum)
            clone.__dict__.update(item.__dict__)
            clone._label = relabeler[item.label]
            if "_true_label" in clone.__dict__:
                clone._true_label = relabeler.get(item.true_label, -1)
            kept.append(clone)
        output.append(kept)
    return output
