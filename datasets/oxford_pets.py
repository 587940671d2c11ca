"""OxfordPets: Parkhi et al., "Cats and Dogs" (CVPR 2012), https://www.robots.ox.ac.uk/~vgg/data/pets/.

CoOp's reader (as in KaiyangZhou/CoOp ``datasets/``): 37 breeds; ``annotations/trainval.txt`` is
split 80/20 into train/val, ``annotations/test.txt`` is the test set.
"""
from __future__ import annotations

import os.path as osp
from typing import List

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .coop_base import CoOpDataset, Splits
from .splits import split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}, a type of pet."

    dataset_dir = "oxford_pets"
    image_folder = "images"
    split_file = "split_zhou_OxfordPets.json"

    def build_split(self) -> Splits:
        trainval = self._read_list("annotations/trainval.txt")
        test = self._read_list("annotations/test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def _read_list(self, relpath: str) -> List[Datum]:
        """Lines ``<imname> <class_id> <species> <breed_id>``; class name = imname minus ``_<n>``."""
        items = []
        with open(self._require(relpath, "annotation file")) as f:
            for line in f:
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                imname, class_id = fields[0], int(fields[1])
                breed = imname.rsplit("_", 1)[0].lower()
                impath = osp.join(self.image_dir, f"{imname}.jpg")
                items.append(Datum(impath=impath, label=class_id - 1, classname=breed))
        return items
