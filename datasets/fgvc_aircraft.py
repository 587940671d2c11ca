"""FGVCAircraft: Maji et al., "Fine-Grained Visual Classification of Aircraft" (arXiv:1306.5151),
https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/.

100 variants; the official ``images_variant_{train,val,test}.txt`` lists are used as they are
(no split JSON); label = line index in ``variants.txt`` (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .coop_base import CoOpDataset, Splits


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a {}, a type of aircraft."

    dataset_dir = "fgvc_aircraft"
    image_folder = "images"
    split_file = ""  # official lists, read every time

    def build_split(self) -> Splits:
        with open(self._require("variants.txt", "class-name file")) as f:
            classnames = [line.strip() for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train, val, test = (self._read_list(f"images_variant_{s}.txt", cname2lab) for s in ("train", "val", "test"))
        return train, val, test

    def _read_list(self, relpath: str, cname2lab: Dict[str, int]) -> List[Datum]:
        """Lines ``<image_id> <variant name, may contain spaces>``."""
        items = []
        path = self._require(relpath, "split file")
        with open(path) as f:
            for line in f:
                fields = line.strip().split(" ")
                if not fields[0]:
                    continue
                classname = " ".join(fields[1:])
                if classname not in cname2lab:
                    raise ValueError(f"FGVCAircraft: variant {classname!r} in {path} is not listed in variants.txt")
                impath = osp.join(self.image_dir, f"{fields[0]}.jpg")
                items.append(Datum(impath=impath, label=cname2lab[classname], classname=classname))
        return items
