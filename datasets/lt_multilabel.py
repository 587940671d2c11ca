"""Shared reader of the long-tailed multi-label benchmarks COCO-LT and VOC-LT.

Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets"
(ECCV 2020, arXiv:2007.09654) built the splits; LMPT (Xia et al., arXiv:2305.04536,
richard-peng-xia/LMPT) ships them as list files with captions. This repository carries unmodified
copies of those files (LMPT@aab39ca ``data/``, Apache-2.0) in ``datasets/lists/lmpt/{coco,voc}/``, with a
NOTICE, the licence and their SHA256SUMS; ``DATASET.LMPT_DATA_DIR ""`` reads them.

- ``<name>_lt_{train,test}.txt``: ``<image path relative to the dataset folder> <i1> <i2> ...``
  with 0-based class indices (a test line may have none); a ``Datum``'s label is the sorted tuple
  of positive indices.
- ``<name>_lt_captions.txt``: ``<same path> <caption>`` per training image; captions are matched by
  path and stored whole on the ``Datum`` (the trainer applies LMPT's 75-character cut).
- ``class_freq`` / ``cls_num_list``: positives per class in the train list, computed here (they equal the
  ``class_freq`` of DBL's ``class_freq.pkl``, wutong16/DistributionBalancedLoss@14460d0 ``appendix/``, which is
  not shipped); ``groups``: head (n ≥ 100) / medium (20 ≤ n < 100) / tail (n < 20), the thresholds of LMPT's
  and DBL's code (equal to DBL's ``class_split.pkl``, whose ``middle`` is our ``medium``).
- There is no val split: val is the test set, as in LMPT.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dassl.config import register_cfg_defaults
from dassl.data.datasets import Datum, DatasetBase

from .splits import dataset_root, require_path

logger = logging.getLogger(__name__)

HEAD_MIN = 100  # head: ≥ 100 training positives (LMPT's ltAnalysis, DBL's class_split)
TAIL_MAX_EXCLUSIVE = 20  # tail: < 20 training positives; medium: 20 ≤ n < 100
# The list files shipped with the package (LMPT@aab39ca data/, Apache-2.0; see NOTICE there).
SHIPPED_LMPT_DIR = osp.join(osp.dirname(osp.abspath(__file__)), "lists", "lmpt")

ListEntry = Tuple[str, Tuple[int, ...]]


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    """COCO-LT / VOC-LT keys."""
    # folder holding coco/ and voc/ with the LT list and caption files; "" = the copies shipped in
    # datasets/lists/lmpt (LMPT's data/ folder); set it to use other lists, e.g. $DATA when they sit by the images
    cfg.DATASET.LMPT_DATA_DIR = ""


def lmpt_list_dir(cfg, subdir: str) -> str:
    """The folder with the list files of ``subdir`` ("coco" or "voc"), per DATASET.LMPT_DATA_DIR."""
    base = cfg.DATASET.LMPT_DATA_DIR or SHIPPED_LMPT_DIR
    return osp.join(osp.abspath(osp.expanduser(base)), subdir)


def read_multilabel_list(path: str, num_classes: int) -> List[ListEntry]:
    """Parse ``<path> <i1> <i2> ...`` lines into (path, sorted unique indices)."""
    entries = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            labels = tuple(sorted({int(x) for x in fields[1:]}))
            if labels and not 0 <= labels[0] <= labels[-1] < num_classes:
                raise ValueError(f"{path}:{lineno}: class index outside 0..{num_classes - 1}: {line.strip()!r}")
            entries.append((fields[0], labels))
    return entries


def read_captions(path: str) -> Dict[str, str]:
    """``<path> <caption words>`` lines → {path: caption with single spaces}."""
    captions = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if fields:
                captions[fields[0]] = " ".join(fields[1:])
    return captions


def class_frequencies(labels: Sequence[Tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Positives per class, int64 [C]."""
    freq = np.zeros(num_classes, dtype=np.int64)
    for positives in labels:
        freq[list(positives)] += 1
    return freq


def head_medium_tail(class_freq: Sequence[int]) -> Dict[str, List[int]]:
    """head (n ≥ 100) / medium (20 ≤ n < 100) / tail (n < 20) class indices."""
    groups: Dict[str, List[int]] = {"head": [], "medium": [], "tail": []}
    for c, n in enumerate(class_freq):
        key = "head" if n >= HEAD_MIN else "tail" if n < TAIL_MAX_EXCLUSIVE else "medium"
        groups[key].append(c)
    return groups


class MultiLabelLongTail(DatasetBase):
    """Train (with captions) and test lists → multi-label ``Datum``s, class counts and groups."""

    dataset_dir = ""  # folder under DATASET.ROOT that the list paths are relative to
    list_subdir = ""  # sub-folder of the lists under DATASET.LMPT_DATA_DIR
    train_list = ""
    test_list = ""
    caption_file = ""
    CLASSNAMES: Tuple[str, ...] = ()  # label order = index in the list files (the order of <name>_labels.txt)
    # Distribution-Balanced loss constants of this benchmark, which LMPT hard-codes per dataset (equal to the DB
    # paper's configs): the negative-logit scale of its negative-tolerant regularisation and the centre of its
    # re-balancing map.  The LMPT trainer reads them unless TRAINER.LMPT.DBL.NEG_SCALE / MAP_MU are set.
    # Defaults: COCO-LT's values, which LMPT uses for any dataset other than VOC-LT.
    DBL_NEG_SCALE: float = 2.0
    DBL_MAP_MU: float = 0.2

    def __init__(self, cfg):
        name = type(self).__name__
        if cfg.DATASET.NUM_SHOTS >= 1 or cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            raise ValueError(f"{name}: multi-label data supports neither DATASET.NUM_SHOTS >= 1 nor "
                             f"DATASET.SUBSAMPLE_CLASSES != 'all'; reset them to -1 and 'all'")
        self.dataset_dir = require_path(osp.join(dataset_root(cfg), type(self).dataset_dir), name, "image folder")
        self.list_dir = require_path(lmpt_list_dir(cfg, self.list_subdir), name, "list folder (DATASET.LMPT_DATA_DIR)")
        num_classes = len(self.CLASSNAMES)
        train_entries = read_multilabel_list(self._require(self.train_list), num_classes)
        test_entries = read_multilabel_list(self._require(self.test_list), num_classes)
        captions = read_captions(self._require(self.caption_file))
        missing = [p for p, _ in train_entries if p not in captions]
        if missing:
            raise ValueError(f"{name}: {len(missing)} training images have no caption in "
                             f"{osp.join(self.list_dir, self.caption_file)}, e.g. {missing[0]}")
        train = self._make_data(train_entries, captions)
        test = self._make_data(test_entries, None)
        super().__init__(train_x=train, val=test, test=test, classnames=self.CLASSNAMES)
        self.class_freq = class_frequencies([d.label for d in train], num_classes)
        self.neg_class_freq = len(train) - self.class_freq
        self.cls_num_list = self.class_freq.tolist()
        self.groups = head_medium_tail(self.class_freq)
        logger.info(f"{name}: {len(train)} train / {len(test)} test images, "
                    + ", ".join(f"{k} {len(v)}" for k, v in self.groups.items()) + " classes")

    def _require(self, filename: str) -> str:
        return require_path(osp.join(self.list_dir, filename), type(self).__name__, "list file")

    def _make_data(self, entries: Sequence[ListEntry], captions: Optional[Dict[str, str]]) -> List[Datum]:
        items = []
        for relpath, labels in entries:
            classname = ",".join(self.CLASSNAMES[c] for c in labels)
            caption = captions[relpath] if captions is not None else None
            items.append(Datum(impath=osp.join(self.dataset_dir, relpath), label=labels,
                               classname=classname, caption=caption))
        return items
