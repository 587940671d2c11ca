"""ImageNetV2: Recht et al., "Do ImageNet Classifiers Generalize to ImageNet?" (ICML 2019),
https://github.com/modestyachts/ImageNetV2 (matched-frequency, 10,000 test images).

Folders are named ``0`` … ``999``: the folder number is the label and the class name is that
line of ``classnames.txt`` (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import listdir_nohidden

from .imagenet_variants import ImageNetVariant
from .splits import require_path


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "imagenetv2"
    image_folder = "imagenetv2-matched-frequency-format-val"

    def read_data(self, classnames: Dict[str, str]) -> List[Datum]:
        items = []
        for label, classname in enumerate(classnames.values()):
            folder = require_path(osp.join(self.image_dir, str(label)), "ImageNetV2", "class folder")
            for imname in sorted(listdir_nohidden(folder)):
                items.append(Datum(impath=osp.join(folder, imname), label=label, classname=classname))
        return items
