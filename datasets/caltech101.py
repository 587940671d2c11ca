"""Caltech101: Fei-Fei et al., "Learning Generative Visual Models from Few Training Examples"
(CVPR 2004 workshop), https://data.caltech.edu/records/mzrjq-6wc02.

CoOp drops ``BACKGROUND_Google`` and ``Faces_easy`` (100 classes left) and renames four
folders; a plain string sort puts the upper-case names first, so labels 0..4 are face, leopard,
motorbike, accordion, airplane (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .coop_base import CoOpDataset, Splits
from .splits import read_and_split_data

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."

    dataset_dir = "caltech-101"
    image_folder = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"

    def build_split(self) -> Splits:
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
