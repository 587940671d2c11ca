"""SUN397: Xiao et al., "SUN Database: Large-scale Scene Recognition from Abbey to Zoo" (CVPR 2010),
https://vision.princeton.edu/projects/2010/SUN/.

``ClassName.txt`` (lines like ``/a/abbey``) fixes the label order; partition 01
(``Training_01.txt`` → train/val 80/20, ``Testing_01.txt`` → test) lists images as
``/a/abbey/sun_xxx.jpg``. The displayed class name drops the initial letter and reverses the
remaining components: ``a/apartment_building/outdoor`` → ``outdoor apartment_building``
(as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .coop_base import CoOpDataset, Splits
from .splits import split_trainval


def display_name(class_key: str) -> str:
    """``a/apartment_building/outdoor`` -> ``outdoor apartment_building``."""
    return " ".join(class_key.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."
    # Prompts whose text features are averaged (DISEF's SUN397 list)
    TEMPLATES = ("a photo of a {}.", "a photo of the {}.")

    dataset_dir = "sun397"
    image_folder = "SUN397"
    split_file = "split_zhou_SUN397.json"

    def build_split(self) -> Splits:
        with open(self._require("ClassName.txt", "class-name file")) as f:
            class_keys = [line.strip()[1:] for line in f if line.strip()]
        cname2lab = {key: i for i, key in enumerate(class_keys)}
        trainval = self._read_list("Training_01.txt", cname2lab)
        test = self._read_list("Testing_01.txt", cname2lab)
        train, val = split_trainval(trainval)
        return train, val, test

    def _read_list(self, relpath: str, cname2lab: Dict[str, int]) -> List[Datum]:
        items = []
        path = self._require(relpath, "partition file")
        with open(path) as f:
            for line in f:
                imname = line.strip()[1:]  # drop the leading "/"
                if not imname:
                    continue
                class_key = osp.dirname(imname)
                if class_key not in cname2lab:
                    raise ValueError(f"SUN397: class {class_key!r} of {imname} in {path} "
                                     f"is not listed in ClassName.txt")
                impath = osp.join(self.image_dir, imname)
                items.append(Datum(impath=impath, label=cname2lab[class_key], classname=display_name(class_key)))
        return items
