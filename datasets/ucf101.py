"""UCF101: Soomro et al., "UCF101: A Dataset of 101 Human Actions Classes From Videos in The Wild"
(arXiv:1212.0402), https://www.crcv.ucf.edu/data/UCF101.php — CoOp uses one middle frame per video.

``ucfTrainTestlist/classInd.txt`` (``<1-based id> <ActionName>``) fixes the labels; split 01
(``trainlist01.txt`` → train/val 80/20, ``testlist01.txt`` → test) lists
``ActionName/v_ActionName_gXX_cYY.avi``. CamelCase actions are renamed ``Apply_Eye_Makeup`` and the
frame is ``UCF-101-midframes/<renamed>/<file>.jpg`` (as in KaiyangZhou/CoOp ``datasets/``).
"""
from __future__ import annotations

import os.path as osp
import re
from typing import Dict, List

from dassl.data.datasets import DATASET_REGISTRY, Datum

from .coop_base import CoOpDataset, Splits
from .splits import split_trainval

LIST_DIR = "ucfTrainTestlist"


def rename_action(action: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup`` (split before each capital letter)."""
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    # Hand-written zero-shot prompt ("{}" = class name), as CoOp's CUSTOM_TEMPLATES
    TEMPLATE = "a photo of a person doing {}."

    dataset_dir = "ucf101"
    image_folder = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"

    def build_split(self) -> Splits:
        cname2lab = {}
        with open(self._require(osp.join(LIST_DIR, "classInd.txt"), "class index file")) as f:
            for line in f:
                fields = line.split()
                if fields:
                    cname2lab[fields[1]] = int(fields[0]) - 1
        trainval = self._read_list(osp.join(LIST_DIR, "trainlist01.txt"), cname2lab)
        test = self._read_list(osp.join(LIST_DIR, "testlist01.txt"), cname2lab)
        train, val = split_trainval(trainval)
        return train, val, test

    def _read_list(self, relpath: str, cname2lab: Dict[str, int]) -> List[Datum]:
        items = []
        path = self._require(relpath, "split list")
        with open(path) as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                action, filename = fields[0].split("/")
                if action not in cname2lab:
                    raise ValueError(f"UCF101: action {action!r} in {path} is not listed in classInd.txt")
                renamed = rename_action(action)
                impath = osp.join(self.image_dir, renamed, osp.splitext(filename)[0] + ".jpg")
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed))
        return items
