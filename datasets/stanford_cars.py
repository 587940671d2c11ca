"""StanfordCars: Krause et al., "3D Object Representations for Fine-Grained Categorization"
(ICCV 2013 workshop), https://ai.stanford.edu/~jkrause/cars/car_dataset.html.

196 classes; annotations are MATLAB files: ``devkit/cars_train_annos.mat`` and
``cars_test_annos_withlabels.mat`` (struct arrays with ``fname`` and 1-based ``class``) and
``devkit/cars_meta.mat`` (``class_names``). CoOp moves the trailing year to the front of each
class name; split paths are relative to the dataset folder (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

import os.path as osp
from typing import List

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .coop_base import CoOpDataset, Splits
from .splits import split_trainval


def year_first(name: str) -> str:
    """"AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV"."""
    words = name.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}."
    # Prompts whose text features are averaged (DISEF's StanfordCars list)
    TEMPLATES = (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of my {}.",
        "i love my {}!",
        "a photo of my dirty {}.",
        "a photo of my clean {}.",
        "a photo of my new {}.",
        "a photo of my old {}.",
    )

    dataset_dir = "stanford_cars"
    image_folder = ""  # split paths look like cars_train/00001.jpg
    split_file = "split_zhou_StanfordCars.json"

    def build_split(self) -> Splits:
        from scipy.io import loadmat

        meta = loadmat(self._require("devkit/cars_meta.mat", "class-name file"))["class_names"][0]
        classnames = [year_first(str(entry[0])) for entry in meta]
        trainval = self._read_annotations("devkit/cars_train_annos.mat", "cars_train", classnames)
        test = self._read_annotations("cars_test_annos_withlabels.mat", "cars_test", classnames)
        train, val = split_trainval(trainval)
        return train, val, test

    def _read_annotations(self, relpath: str, image_folder: str, classnames: List[str]) -> List[Datum]:
        from scipy.io import loadmat

        records = loadmat(self._require(relpath, "annotation file"))["annotations"][0]
        items = []
        for record in records:
            label = int(record["class"][0, 0]) - 1
            impath = osp.join(self.image_dir, image_folder, str(record["fname"][0]))
            items.append(Datum(impath=impath, label=label, classname=classnames[label]))
        return items
