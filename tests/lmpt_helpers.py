"""Test helpers for LMPT / multi-label tests: the shipped COCO-LT / VOC-LT lists with stand-in images."""
from __future__ import annotations

import os
import os.path as osp

from dataset_fixtures import write_image
from vlprompt.datasets.lt_multilabel import SHIPPED_LMPT_DIR, read_multilabel_list

SUBDIRS = {"COCOLT": "coco", "VOCLT": "voc"}  # list folder and file prefix per dataset


def link_lmpt_images(root, name: str) -> None:
    """Every image of the shipped COCO-LT / VOC-LT train and test lists as a hard link to one tiny JPEG."""
    subdir = SUBDIRS[name]
    src = write_image(str(root / "one.jpg"))
    for split in ("train", "test"):
        for path, _ in read_multilabel_list(osp.join(SHIPPED_LMPT_DIR, subdir, f"{subdir}_lt_{split}.txt"), 80):
            dst = root / subdir / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
