"""Food101: Bossard et al., "Food-101 – Mining Discriminative Components with Random Forests"
(ECCV 2014), https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/.

101 class folders under ``images/`` (names such as ``apple_pie``); without the split JSON each
class is split 50/20/30 (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .coop_base import CoOpDataset, Splits
from .splits import read_and_split_data


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of {}, a type of food."

    dataset_dir = "food-101"
    image_folder = "images"
    split_file = "split_zhou_Food101.json"

    def build_split(self) -> Splits:
        return read_and_split_data(self.image_dir)
