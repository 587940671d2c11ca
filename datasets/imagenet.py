"""ImageNet: Deng et al., "ImageNet: A Large-Scale Hierarchical Image Database" (CVPR 2009),
https://image-net.org/ — CoOp's reader (KaiyangZhou/CoOp ``datasets/imagenet.py``).

``images/train`` and ``images/val`` hold one folder per wnid; the val set is the test set.
Labels are the sorted wnid order, class names come from ``classnames.txt`` (CLIP's names, one
``<wnid> <name>`` per line). The scan is cached in ``preprocessed.pkl`` (``{"train", "test"}`` lists
of ``Datum`` with absolute paths: CoOp's file and format, so CoOp reads ours and we read CoOp's).

Deliberate change: images inside a class folder are listed in sorted order, so the few-shot subsets
are the same on every machine. CoOp used unsorted ``os.listdir``, whose order depends on the
filesystem and cannot be reproduced; a ``preprocessed.pkl`` written by CoOp is read as it is, which
gives exactly the order of the machine that wrote it.
"""
from __future__ import annotations

import logging
import os.path as osp
from collections import OrderedDict
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from dassl.utils import listdir_nohidden

from .prompt_templates import IMAGENET_TEMPLATES_SELECT
from .splits import (
    CacheFormatError,
    dataset_root,
    load_datum_pickle,
    load_or_create_fewshot,
    require_path,
    save_datum_pickle,
    subsample_classes,
)

logger = logging.getLogger(__name__)


def read_classnames(path: str, dataset: str) -> Dict[str, str]:
    """``classnames.txt`` → ordered ``{wnid: class name}`` (names may contain spaces)."""
    classnames: Dict[str, str] = OrderedDict()
    with open(require_path(path, dataset, "classnames.txt")) as f:
        for line in f:
            fields = line.strip().split(" ")
            if fields[0]:
                classnames[fields[0]] = " ".join(fields[1:])
    return classnames


def read_wnid_folders(image_dir: str, classnames: Dict[str, str], dataset: str) -> List[Datum]:
    """One sub-folder per wnid, sorted → label = index; images sorted inside each folder.

    Plain files next to the folders (ImageNet-A/R ship a ``README.txt``) are skipped.
    """
    folders = sorted(f for f in listdir_nohidden(image_dir) if osp.isdir(osp.join(image_dir, f)))
    items = []
    for label, wnid in enumerate(folders):
        if wnid not in classnames:
            raise ValueError(f"{dataset}: folder {osp.join(image_dir, wnid)} has no line in classnames.txt — "
                             f"see DATASETS.md#{dataset.lower()}")
        folder = osp.join(image_dir, wnid)
        for imname in sorted(listdir_nohidden(folder)):
            items.append(Datum(impath=osp.join(folder, imname), label=label, classname=classnames[wnid]))
    return items


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."
    # Prompts whose text features are averaged (DISEF's ImageNet list = CLIP's 7-template ensemble)
    TEMPLATES = IMAGENET_TEMPLATES_SELECT

    dataset_dir = "imagenet"

    def __init__(self, cfg):
        root = dataset_root(cfg)
        self.dataset_dir = require_path(osp.join(root, type(self).dataset_dir), "ImageNet", "dataset folder")
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        if osp.exists(self.preprocessed):
            logger.info(f"Loading preprocessed ImageNet data from {self.preprocessed}")
            data = load_datum_pickle(self.preprocessed, self.dataset_dir)
            if not data.get("train") or not data.get("test"):
                raise CacheFormatError(f"{self.preprocessed}: expected 'train' and 'test' lists of Datum objects; "
                                       f"delete the file so the image folders are scanned again")
            train, test = data["train"], data["test"]
        else:
            classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"), "ImageNet")
            train = self._read_split("train", classnames)
            test = self._read_split("val", classnames)
            save_datum_pickle({"train": train, "test": test}, self.preprocessed, self.dataset_dir)
            logger.info(f"Saved preprocessed ImageNet data to {self.preprocessed}")
        train, _ = load_or_create_fewshot(self, self.dataset_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, None)
        train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=test, test=test)

    def _read_split(self, split: str, classnames: Dict[str, str]) -> List[Datum]:
        split_dir = require_path(osp.join(self.image_dir, split), "ImageNet", f"images/{split} folder")
        return read_wnid_folders(split_dir, classnames, "ImageNet")
