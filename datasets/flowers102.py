"""Flowers102 in torchvision's layout and the official split: Nilsback & Zisserman, "Automated Flower
Classification over a Large Number of Classes" (ICVGIP 2008),
https://www.robots.ox.ac.uk/~vgg/data/flowers/102/.

This is the seed notebook's protocol, next to CoOp's
``OxfordFlowers``: ``flowers-102/setid.mat`` (``trnid``/``valid``/``tstid``, 1-based image ids;
1,020 / 1,020 / 6,149 images) picks the images, ``imagelabels.mat`` gives 1-based labels, and
label ``l`` is torchvision's class ``Flowers102.classes[l]``. With
``DATASET.SUBSAMPLE_CLASSES`` base = labels 0–50 and new = 51–101 (the same first-half rule).
``DATASET.NUM_SHOTS`` < 1 keeps all 10 training images per class, as the notebook does.
"""
from __future__ import annotations

import os.path as osp
from typing import List

import numpy as np

from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase

from .splits import dataset_root, load_or_create_fewshot, require_path, subsample_classes

SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}  # setid.mat field per split


def flower_classnames() -> List[str]:
    """The 102 class names in label order (torchvision's list, also the notebook's)."""
    from torchvision.datasets import Flowers102 as TorchvisionFlowers102

    names = getattr(TorchvisionFlowers102, "classes", None)
    if names is None or len(names) != 102:
        raise ImportError("Flowers102 needs torchvision>=0.17, whose Flowers102.classes lists the 102 class names")
    return list(names)


@DATASET_REGISTRY.register()
class Flowers102(DatasetBase):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}, a type of flower."

    dataset_dir = "flowers-102"  # torchvision's folder: Flowers102(root=DATASET.ROOT, download=True) creates it

    def __init__(self, cfg):
        from scipy.io import loadmat

        root = dataset_root(cfg)
        self.dataset_dir = require_path(osp.join(root, type(self).dataset_dir), "Flowers102", "dataset folder")
        self.image_dir = require_path(osp.join(self.dataset_dir, "jpg"), "Flowers102", "image folder")
        setid = loadmat(self._require("setid.mat"), squeeze_me=True)
        labels = loadmat(self._require("imagelabels.mat"), squeeze_me=True)["labels"]
        classnames = flower_classnames()
        train, val, test = (self._read(setid[SPLIT_KEYS[s]], labels, classnames) for s in ("train", "val", "test"))
        train, val = load_or_create_fewshot(self, self.dataset_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def _require(self, filename: str) -> str:
        return require_path(osp.join(self.dataset_dir, filename), "Flowers102", "file")

    def _read(self, image_ids: np.ndarray, labels: np.ndarray, classnames: List[str]) -> List[Datum]:
        """Datums for 1-based ``image_ids`` in setid.mat order; ``labels`` are imagelabels.mat's (1-based)."""
        labels = np.atleast_1d(labels)
        items = []
        for image_id in np.atleast_1d(image_ids).tolist():
            label = int(labels[image_id - 1]) - 1
            impath = osp.join(self.image_dir, f"image_{image_id:05d}.jpg")
            items.append(Datum(impath=impath, label=label, classname=classnames[label]))
        return items
