"""DescribableTextures: Cimpoi et al., "Describing Textures in the Wild" (CVPR 2014),
https://www.robots.ox.ac.uk/~vgg/data/dtd/.

47 texture folders under ``images/``; without the split JSON each class is split 50/20/30
(as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .coop_base import CoOpDataset, Splits
from .splits import read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "{} texture."

    dataset_dir = "dtd"
    image_folder = "images"
    split_file = "split_zhou_DescribableTextures.json"

    def build_split(self) -> Splits:
        return read_and_split_data(self.image_dir)
