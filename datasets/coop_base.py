"""The constructor flow shared by CoOp's ten split-JSON datasets (KaiyangZhou/CoOp).

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022, arXiv:2109.01134);
reference: KaiyangZhou/CoOp ``datasets/oxford_pets.py`` (the flow is written there and reused by
every other dataset).

A subclass declares its folders and split file, and implements ``build_split`` — the
dataset-specific reader used only when ``split_zhou_<Name>.json`` is absent (or always, for
datasets with official lists such as FGVCAircraft, which leave ``split_file`` empty).
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import List, Tuple

from dassl.data.datasets import Datum, DatasetBase

from .splits import (
    DATASETS_DOC,
    dataset_root,
    load_or_create_fewshot,
    read_split,
    require_path,
    save_split,
    subsample_classes,
)

logger = logging.getLogger(__name__)

Splits = Tuple[List[Datum], List[Datum], List[Datum]]


class CoOpDataset(DatasetBase):
    """Read (or build and save) the split, take the few-shot subset, then keep base/new classes.

    Instance attributes after construction: ``dataset_dir`` and ``image_dir`` (absolute),
    ``split_path`` (absolute, "" when the dataset has no split JSON).
    """

    dataset_dir = ""  # folder under DATASET.ROOT (CoOp's name)
    image_folder = ""  # folder under dataset_dir that split paths are relative to ("" = dataset_dir)
    split_file = ""  # split_zhou_<Name>.json under dataset_dir; "" = always use build_split()

    def __init__(self, cfg):
        name = type(self).__name__
        self.dataset_dir = require_path(osp.join(dataset_root(cfg), type(self).dataset_dir), name, "dataset folder")
        self.image_dir = require_path(osp.join(self.dataset_dir, self.image_folder), name, "image folder")
        self.split_path = osp.join(self.dataset_dir, self.split_file) if self.split_file else ""
        train, val, test = self._load_split()
        train, val = load_or_create_fewshot(self, self.dataset_dir, cfg.DATASET.NUM_SHOTS, cfg.SEED, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def _load_split(self) -> Splits:
        if not self.split_path:
            return self.build_split()
        if osp.exists(self.split_path):
            return read_split(self.split_path, self.image_dir)
        logger.warning(
            f"{type(self).__name__}: {self.split_path} not found; creating a new random split from the raw files, "
            f"so results are not comparable with CoOp's fixed split (get the file as described in "
            f"{DATASETS_DOC}#{type(self).__name__.lower()})"
        )
        train, val, test = self.build_split()
        save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def build_split(self) -> Splits:
        """(train, val, test) built from the dataset's own files; labels 0..C-1."""
        raise NotImplementedError(f"{type(self).__name__} has no reader for its raw files")

    def _require(self, relpath: str, what: str = "file") -> str:
        """Absolute path of ``relpath`` under ``dataset_dir``; a clear error if it is missing."""
        return require_path(osp.join(self.dataset_dir, relpath), type(self).__name__, what)
