"""OxfordFlowers (CoOp's protocol): Nilsback & Zisserman, "Automated Flower Classification over a
Large Number of Classes" (ICVGIP 2008), https://www.robots.ox.ac.uk/~vgg/data/flowers/102/.

``imagelabels.mat`` (1-based ``labels``) labels ``jpg/image_{i:05d}.jpg``; class names come from
``cat_to_name.json``; without the split JSON each class is split 50/20/30 in order of first
appearance (as in KaiyangZhou/CoOp ``datasets/``). See ``Flowers102`` for the official split.
"""
from __future__ import annotations

import os.path as osp
import random
from collections import OrderedDict
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import read_json

from .coop_base import CoOpDataset, Splits

P_TRAIN, P_VAL = 0.5, 0.2  # CoOp's per-class fractions; the rest is test


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}, a type of flower."

    dataset_dir = "oxford_flowers"
    image_folder = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"

    def build_split(self) -> Splits:
        from scipy.io import loadmat

        labels = loadmat(self._require("imagelabels.mat", "label file"))["labels"][0]
        lab2cname = read_json(self._require("cat_to_name.json", "class-name file"))
        tracker: Dict[int, List[str]] = OrderedDict()
        for i, label in enumerate(labels, start=1):
            tracker.setdefault(int(label), []).append(osp.join(self.image_dir, f"image_{i:05d}.jpg"))
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            random.shuffle(impaths)
            n_train = round(len(impaths) * P_TRAIN)
            n_val = round(len(impaths) * P_VAL)
            if min(n_train, n_val, len(impaths) - n_train - n_val) <= 0:
                raise ValueError(f"OxfordFlowers: label {label} has too few images ({len(impaths)}) "
                                 f"for a 50/20/30 split")
            cname = lab2cname[str(label)]
            for split, chunk in ((train, impaths[:n_train]), (val, impaths[n_train:n_train + n_val]),
                                 (test, impaths[n_train + n_val:])):
                split.extend(Datum(impath=p, label=label - 1, classname=cname) for p in chunk)
        return train, val, test
