"""Split files, few-shot caches and base/new subsampling shared by every CoOp-style dataset.

Formats are CoOp's (KaiyangZhou/CoOp ``datasets/oxford_pets.py``, Dassl ``DatasetBase``), so one data root
serves this project and CoOp, CoCoOp, MaPLe or PromptSRC alike:
- ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}``.
- ``split_fewshot/shot_{K}-seed_{S}.pkl``: ``{"train": [Datum], "val": [Datum]}`` with absolute image paths
  (upstream's ``Datum`` checks that its file exists).  Reading also accepts paths relative to the dataset
  folder (older files of this project) and re-roots absolute paths written under another data root.
Every pickle is read with ``dassl.utils.safe_pickle`` (plain data and ``Datum`` objects only).
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
from dassl.utils.safe_pickle import load_pickle

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
    check_split_labels(split, filepath)

    def _convert(items) -> List[Datum]:
        return [Datum(impath=osp.join(path_prefix, impath), label=int(label), classname=classname)
                for impath, label, classname in items]

    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


class SplitFileError(ValueError):
    """A split JSON whose entries are malformed, or whose labels do not fit its class names."""


def check_split_labels(split: object, filepath: str) -> None:
    """Every entry is ``[path, label, classname]``, the n distinct labels are exactly 0..n-1, and each label
    always comes with the same class name; else one line naming the file and the first bad entry."""
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise SplitFileError(f"{filepath}: expected train/val/test lists of [path, label, classname]; re-download "
                             "the split file or delete it so it is rebuilt")
    names: Dict[int, str] = {}
    entries = [(name, i, entry) for name in ("train", "val", "test") for i, entry in enumerate(split[name])]
    for name, i, entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
            raise SplitFileError(f"{filepath}: {name}[{i}] = {entry!r} is not [path, label, classname]")
        label, classname = entry[1], entry[2]
        if names.setdefault(label, classname) != classname:
            raise SplitFileError(f"{filepath}: {name}[{i}] gives label {label} the class name {classname!r}, other "
                                 f"entries {names[label]!r}")
    n_classes = len(names)  # labels must be exactly 0..n-1
    for name, i, entry in entries:
        if not 0 <= entry[1] < n_classes:
            raise SplitFileError(f"{filepath}: {name}[{i}] has label {entry[1]}, outside 0..{n_classes - 1} for the "
                                 f"{n_classes} classes the file names; fix or re-download the split file")


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
    if not categories:
        raise DatasetNotFoundError(f"{image_dir} holds no class folders; put one folder of images per class there "
                                   "(layouts: DATASETS.md)")
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
            raise ValueError(f"class folder {category_dir} has too few images ({n_total}) for a 50/20/30 split; "
                             "add images or remove the folder")
        classname = new_cnames.get(category, category) if new_cnames else category
        train.extend(_collate(images[:n_train], label, classname))
        val.extend(_collate(images[n_train:n_train + n_val], label, classname))
        test.extend(_collate(images[n_train + n_val:], label, classname))
    return train, val, test


# ----------------------------------------------------------------------------- Datum pickles


class CacheFormatError(ValueError):
    """A Datum pickle holds something other than ``{split: [Datum, ...]}``."""


def fewshot_cache_path(dataset_dir: str, num_shots: int, seed: int) -> str:
    """CoOp's cache file name: ``<dataset_dir>/split_fewshot/shot_{K}-seed_{S}.pkl``."""
    return osp.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.pkl")


def _with_impath(item: Datum, impath: str) -> Datum:
    """A copy of ``item`` with another image path (``Datum`` has no setter; its file check is skipped)."""
    clone = Datum.__new__(Datum)
    clone.__dict__.update(item.__dict__)
    clone._impath = impath
    return clone


def _absolute(items: Sequence[Datum], root: str) -> List[Datum]:
    """``items`` with every relative image path joined under ``root`` (absolute ones are kept)."""
    return [item if osp.isabs(item.impath) else _with_impath(item, osp.join(root, item.impath)) for item in items]


def _old_root(path: str, root: str) -> Optional[str]:
    """The folder that played the role of ``root`` in ``path``, a path written under another data root.

    First choice: the last component of ``path`` named like ``root``'s folder (``.../oxford_pets/images/x.jpg``);
    otherwise the shortest prefix whose remainder exists under ``root``.  ``None`` if neither is found.
    """
    parts = path.split(os.sep)
    base = osp.basename(root)
    if base in parts[:-1]:
        last = len(parts) - 2 - parts[-2::-1].index(base)
        return os.sep.join(parts[:last + 1])
    for i in range(1, len(parts) - 1):
        if osp.exists(osp.join(root, *parts[i:])):
            return os.sep.join(parts[:i])
    return None


def _reroot(items: Sequence[Datum], root: str, moved: Dict[str, int]) -> List[Datum]:
    """Absolute paths under ``root``: relative ones are joined, another root's prefix is replaced.

    ``moved`` counts re-rooted paths per old root (filled in place, for the caller's log line).  The old root
    is searched once per distinct prefix, not once per item (ImageNet's cache holds 1.28M items).
    """
    root = osp.normpath(root)
    out, old = [], None
    for item in items:
        path = item.impath
        if not osp.isabs(path):
            path = osp.join(root, path)
        elif not (path == root or path.startswith(root + os.sep)):
            if old is None or not path.startswith(old + os.sep):
                old = _old_root(path, root)
            if old is not None and path.startswith(old + os.sep):
                moved[old] = moved.get(old, 0) + 1
                path = root + path[len(old):]
        out.append(item if path == item.impath else _with_impath(item, path))
    return out


def _check_datum_lists(data: object, path: str) -> Dict[str, Optional[List[Datum]]]:
    """``data`` if it is ``{split: [Datum, ...] or None}`` with string image paths, else a one-line error."""
    if not isinstance(data, dict):
        raise CacheFormatError(f"{path}: expected a dict of Datum lists, found {type(data).__name__}; delete the "
                               f"file so it is rebuilt")
    for key, items in data.items():
        if items is None:
            continue
        if not isinstance(items, list) or not all(
                isinstance(item, Datum) and isinstance(item.__dict__.get("_impath"), str) for item in items):
            raise CacheFormatError(f"{path}: entry {key!r} is not a list of Datum objects with image paths; delete "
                                   f"the file so it is rebuilt")
    return data


def save_datum_pickle(data: Dict[str, Sequence[Datum]], path: str, root: str) -> None:
    """Pickle ``{split: [Datum]}`` exactly as CoOp / Dassl do, atomically.

    CoOp's format: the plain dict of ``dassl.data.datasets.base_dataset.Datum`` objects with *absolute* image
    paths (upstream's ``Datum`` checks that its file exists), pickled with the highest protocol.  A data root
    written here therefore stays usable by CoOp, CoCoOp, MaPLe or PromptSRC.  Relative paths are made
    absolute under ``root``.
    """
    payload = {key: _absolute(items, root) if items is not None else None for key, items in data.items()}
    mkdir_if_missing(osp.dirname(path))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_datum_pickle(path: str, root: str, rewrite: bool = True) -> Dict[str, Optional[List[Datum]]]:
    """Read a ``{split: [Datum]}`` pickle (CoOp's, or ours) with absolute paths under ``root``.

    The file goes through the restricted unpickler (nothing in it can run).  Paths may be absolute (CoOp's
    format), relative to ``root`` (files written by older versions of this project) or absolute under another
    data root (a cache copied from another machine): the last are re-rooted with one log line.  With
    ``rewrite``, a file that needed either fix is written back in CoOp's format, so other codebases sharing
    the data root can read it too (best effort: a read-only data root is left as it is).
    """
    data = _check_datum_lists(load_pickle(path), path)
    moved: Dict[str, int] = {}
    fixed = {key: _reroot(items, root, moved) if items is not None else None for key, items in data.items()}
    if moved:
        old = max(moved, key=moved.get)  # the root most paths came from (normally the only one)
        logger.info(f"Re-rooted {sum(moved.values())} image paths of {path} from {old} to {osp.normpath(root)} "
                    f"(the file was written under another data root)")
    changed = any(a is not b for key, items in data.items() if items is not None
                  for a, b in zip(items, fixed[key]))
    if rewrite and changed:
        try:
            save_datum_pickle(fixed, path, root)
        except OSError as err:
            logger.debug(f"could not rewrite {path} with this root's paths: {err}")
    return fixed


def warn_short_classes(items: Sequence[Datum], num_shots: int) -> None:
    """One log line when some classes have fewer than ``num_shots`` training images (they keep all of them)."""
    counts: Dict[int, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    short = {label: n for label, n in counts.items() if n < num_shots}
    if short:
        logger.warning(f"DATASET.NUM_SHOTS {num_shots}: {len(short)} of {len(counts)} classes have fewer training "
                       f"images (as few as {min(short.values())}); they keep all they have (Dassl's sampling, no "
                       "repeats), so the few-shot set is smaller than NUM_SHOTS x classes")


def load_or_create_fewshot(
    dataset: DatasetBase,
    dataset_dir: str,
    num_shots: int,
    seed: int,
    train: List[Datum],
    val: Optional[List[Datum]] = None,
) -> Tuple[List[Datum], Optional[List[Datum]]]:
    """K shots per class for train and min(K, 4) for val, cached per (K, seed) in CoOp's file and format.

    The sampling order (train first, then val) is the reference's, so with the same seed and file listing
    the subsets, and the cache file, equal CoOp's.
    """
    if num_shots < 1:
        return train, val
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    warn_short_classes(train, num_shots)
    if osp.exists(path):
        logger.info(f"Loading preprocessed few-shot data from {path}")
        data = load_datum_pickle(path, dataset_dir)
        if not data.get("train"):
            raise CacheFormatError(f"{path}: no 'train' list of Datum objects; delete the file so it is rebuilt")
        return data["train"], data["val"] if data.get("val") is not None else val
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": train}
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = val
    logger.info(f"Saving preprocessed few-shot data to {path}")
    save_datum_pickle(data, path, dataset_dir)
    return _absolute(train, dataset_dir), _absolute(val, dataset_dir) if val is not None else None


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
