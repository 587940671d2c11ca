"""Long-tailed CIFAR-10/100 (CIFAR-10-LT, CIFAR-100-LT): Cao et al., "Learning Imbalanced Datasets
with Label-Distribution-Aware Margin Loss" (NeurIPS 2019, arXiv:1906.07413), on Krizhevsky's CIFAR
(https://www.cs.toronto.edu/~kriz/cifar.html). Construction as in the LangevinCoOp reference:

- the official "python version" pickles are read directly (bytes or str keys; no MD5 check, no
  download) from ``<root>/<dataset_dir>/<base_folder>``, ``<root>/<dataset_dir>`` or
  ``<root>/<base_folder>`` (torchvision's layout), with the restricted unpickler of
  ``dassl.utils.safe_pickle`` (dicts, lists, bytes and NumPy arrays only: a batch that names anything
  else is refused before it can run code);
- class c keeps ``n_c = int(n_max * ratio ** (c / (C - 1)))`` training images, n_max = N / C,
  ratio = ``DATASET.IMB_RATIO``; which ones: per class in order 0..C-1, the class's indices in file
  order are shuffled by one ``numpy.random.RandomState(DATASET.IMB_SEED)`` and the first n_c kept;
- the test set is the balanced official one (also used as val, as the reference does);
- ``groups``: many (≥ 100 training images) / medium / few (≤ 20), ``cls_num_list``: n_c.

``Datum`` needs a file path, so the images used are written once as lossless PNGs under
``<root>/<dataset_dir>/png/{train,test}/<index>.png`` (index = position in the official file order), a
folder no other codebase reads; the official batches are never modified.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from dassl.config import register_cfg_defaults
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.utils import mkdir_if_missing
from dassl.utils.safe_pickle import UnreadablePickleError, load_pickle

from .splits import DATASETS_DOC, DatasetNotFoundError, dataset_root, subsample_classes

logger = logging.getLogger(__name__)

IMB_RATIOS = (0.005, 0.01, 0.02, 0.1)  # the reference's ratios (imbalance factor 200/100/50/10)
MANY_SHOT_MIN = 100  # a class with ≥ 100 training images is "many" (the LangevinCoOp reference's groups)
FEW_SHOT_MAX = 20  # a class with ≤ 20 training images is "few"; the rest are "medium"
CIFAR_SIDE = 32  # images are 3×32×32, stored row-major per channel (R plane, G plane, B plane)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    """CIFAR-LT keys."""
    # n_min / n_max of the exponential long-tail profile; the reference uses 0.005, 0.01, 0.02, 0.1
    cfg.DATASET.IMB_RATIO = 0.01
    # seed of the numpy RandomState that picks each class's random subset (reference: 88)
    cfg.DATASET.IMB_SEED = 88


# ----------------------------------------------------------------------------- pickles


def load_cifar_pickle(path: str) -> Dict[str, object]:
    """Read one CIFAR python pickle; keys and byte-string values are returned as ``str``.

    The batches are Python 2 pickles: ``encoding="bytes"`` keeps their strings as bytes, decoded here.
    """
    raw = load_pickle(path, encoding="bytes")
    if not isinstance(raw, dict):
        raise UnreadablePickleError(f"{path}: expected a CIFAR python batch (a dict), found {type(raw).__name__}; "
                                    f"download the python version again")

    def _str(x):
        return x.decode("latin1") if isinstance(x, bytes) else x

    out = {}
    for key, value in raw.items():
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [_str(v) for v in value]
        out[_str(key)] = value
    return out


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> List[int]:
    """``n_c = int(n_max * ratio ** (c / (C - 1.0)))`` for c = 0..C-1 (class 0 is the head)."""
    return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def long_tail_indices(labels: Sequence[int], counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices kept per class, class-blocked: each class's indices shuffled by one RandomState(seed)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:n_c])
    return np.concatenate(kept)


def class_groups(cls_num_list: Sequence[int]) -> Dict[str, List[int]]:
    """many (n ≥ 100) / medium / few (n ≤ 20) class indices from training counts."""
    groups: Dict[str, List[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(cls_num_list):
        key = "many" if n >= MANY_SHOT_MIN else "few" if n <= FEW_SHOT_MAX else "medium"
        groups[key].append(c)
    return groups


def to_hwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] uint8 rows → [N, 32, 32, 3] images."""
    return rows.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)  # [N, 3, H, W] → [N, H, W, 3]


# ----------------------------------------------------------------------------- datasets


class CIFARLongTail(DatasetBase):
    """Shared CIFAR-LT reader; subclasses name the folders, files and label keys."""

    dataset_dir = ""  # folder under DATASET.ROOT (the reference's ./datasets/<dataset_dir>)
    base_folder = ""  # the archive's folder, torchvision's base_folder
    train_files: Tuple[str, ...] = ()
    test_file = ""
    meta_file = ""
    label_key = ""  # key of the label list in each data pickle
    names_key = ""  # key of the class-name list in the meta pickle

    def __init__(self, cfg):
        name = type(self).__name__
        if cfg.DATASET.NUM_SHOTS >= 1:
            raise ValueError(f"{name}: DATASET.NUM_SHOTS={cfg.DATASET.NUM_SHOTS} is not supported; the training "
                             f"subset is fixed by DATASET.IMB_RATIO — set DATASET.NUM_SHOTS -1")
        ratio = float(cfg.DATASET.IMB_RATIO)
        if not 0 < ratio <= 1:
            raise ValueError(f"DATASET.IMB_RATIO={ratio}; expected 0 < ratio <= 1 (the reference uses {IMB_RATIOS})")
        root = dataset_root(cfg)
        self.data_dir = self._find_data_dir(root)
        self.png_dir = osp.join(root, type(self).dataset_dir, "png")
        classnames = [str(c) for c in load_cifar_pickle(osp.join(self.data_dir, self.meta_file))[self.names_key]]
        train_rows, train_labels = self._read_data(self.train_files)
        test_rows, test_labels = self._read_data((self.test_file,))

        n_max = len(train_labels) // len(classnames)
        counts = long_tail_counts(n_max, len(classnames), ratio)
        kept = long_tail_indices(train_labels, counts, int(cfg.DATASET.IMB_SEED))
        logger.info(f"{name}: ratio {ratio}, {len(kept)} training images, per class {counts}")
        train = self._make_data("train", train_rows, train_labels, kept, classnames)
        test = self._make_data("test", test_rows, test_labels, np.arange(len(test_labels)), classnames)

        train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        if cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            classnames = self.get_lab2cname(train)[1]
        super().__init__(train_x=train, val=test, test=test, classnames=classnames)
        self.cls_num_list = np.bincount([d.label for d in train], minlength=len(classnames)).tolist()
        self.groups = class_groups(self.cls_num_list)

    def _find_data_dir(self, root: str) -> str:
        candidates = [osp.join(root, self.dataset_dir, self.base_folder), osp.join(root, self.dataset_dir),
                      osp.join(root, self.base_folder)]
        for folder in candidates:
            if osp.isfile(osp.join(folder, self.meta_file)):
                return folder
        name = type(self).__name__
        raise DatasetNotFoundError(
            f"{name}: CIFAR python pickles ({self.meta_file}, ...) not found at {candidates[0]} — see "
            f"{DATASETS_DOC}#{name.lower()} or run scripts/download_data.sh {name}"
        )

    def _read_data(self, files: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for filename in files:
            path = osp.join(self.data_dir, filename)
            if not osp.isfile(path):
                name = type(self).__name__
                raise DatasetNotFoundError(f"{name}: {path} not found — see {DATASETS_DOC}#{name.lower()}")
            batch = load_cifar_pickle(path)
            rows.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3 * CIFAR_SIDE * CIFAR_SIDE))
            labels.append(np.asarray(batch[self.label_key], dtype=np.int64))
        return np.concatenate(rows), np.concatenate(labels)

    def _make_data(self, split: str, rows: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                   classnames: List[str]) -> List[Datum]:
        """Datums for ``indices``, exporting missing PNGs (written atomically, once)."""
        folder = osp.join(self.png_dir, split)
        mkdir_if_missing(folder)
        paths = [osp.join(folder, f"{i:05d}.png") for i in indices.tolist()]
        missing = [(i, p) for i, p in zip(indices.tolist(), paths) if not osp.exists(p)]
        if missing:
            logger.info(f"Writing {len(missing)} {split} PNGs to {folder}")
            images = to_hwc(rows[[i for i, _ in missing]])
            for image, (_, path) in zip(images, missing):
                tmp = f"{path}.tmp{os.getpid()}.png"
                Image.fromarray(image).save(tmp)
                os.replace(tmp, path)
        return [Datum(impath=p, label=int(labels[i]), classname=classnames[labels[i]], check_file=False)
                for i, p in zip(indices.tolist(), paths)]


@DATASET_REGISTRY.register()
class CIFAR10LT(CIFARLongTail):
    dataset_dir = "cifar-10-python"
    base_folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"


@DATASET_REGISTRY.register()
class CIFAR100LT(CIFARLongTail):
    # Prompts whose text features are averaged (DISEF's CIFAR-100 list, CLIP's 18 CIFAR templates)
    TEMPLATES = (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a black and white photo of a {}.",
        "a low contrast photo of a {}.",
        "a high contrast photo of a {}.",
        "a bad photo of a {}.",
        "a good photo of a {}.",
        "a photo of a small {}.",
        "a photo of a big {}.",
        "a photo of the {}.",
        "a blurry photo of the {}.",
        "a black and white photo of the {}.",
        "a low contrast photo of the {}.",
        "a high contrast photo of the {}.",
        "a bad photo of the {}.",
        "a good photo of the {}.",
        "a photo of the small {}.",
        "a photo of the big {}.",
    )

    dataset_dir = "cifar-100-python"
    base_folder = "cifar-100-python"
    train_files = ("train",)
    test_file = "test"
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
