"""Shared reader of the evaluation-only ImageNet variants (as in KaiyangZhou/CoOp ``datasets/``)."""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, List

from dassl.data.datasets import Datum, DatasetBase

from .imagenet import read_classnames, read_wnid_folders
from .splits import dataset_root, require_path

logger = logging.getLogger(__name__)


class ImageNetVariant(DatasetBase):
    """Test-only: ``DatasetBase(train_x=data, test=data)``; no val, few-shot or base/new.

    Subclasses set ``dataset_dir`` and ``image_folder``; ``classnames.txt`` (a copy of
    ImageNet's) sits in ``dataset_dir``.
    """

    dataset_dir = ""
    image_folder = ""

    def __init__(self, cfg):
        name = type(self).__name__
        self.dataset_dir = require_path(osp.join(dataset_root(cfg), type(self).dataset_dir), name, "dataset folder")
        self.image_dir = require_path(osp.join(self.dataset_dir, self.image_folder), name, "image folder")
        if cfg.DATASET.SUBSAMPLE_CLASSES != "all" or cfg.DATASET.NUM_SHOTS >= 1:
            logger.warning(f"{name} is evaluation-only: DATASET.SUBSAMPLE_CLASSES and DATASET.NUM_SHOTS are ignored")
        classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"), name)
        data = self.read_data(classnames)
        super().__init__(train_x=data, test=data)

    def read_data(self, classnames: Dict[str, str]) -> List[Datum]:
        return read_wnid_folders(self.image_dir, classnames, type(self).__name__)
