"""``DataManager``, ``DatasetWrapper`` and ``build_data_loader`` (as in Dassl's ``dassl/data/data_manager.py``)."""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Optional

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import Dataset as TorchDataset
from torchvision.transforms import Compose, Normalize, Resize, ToTensor

from dassl.utils import get_rank, get_world_size, read_image

from .datasets import build_dataset, postprocess_dataset
from .samplers import ContiguousShardSampler, SeededItemSampler, ShardedBatchSampler, build_sampler
from .transforms import INTERPOLATION_MODES, build_transform

logger = logging.getLogger(__name__)

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "build_transform", "build_dataset", "build_sampler",
           "INTERPOLATION_MODES", "read_image"]


def build_data_loader(
    cfg,
    sampler_type: str = "SequentialSampler",
    data_source=None,
    batch_size: int = 64,
    n_domain: int = 0,
    n_ins: int = 2,
    tfm=None,
    is_train: bool = True,
    dataset_wrapper=None,
    num_classes: Optional[int] = None,
    drop_last: Optional[bool] = None,
):
    """A ``DataLoader`` over ``data_source``; train loaders drop the last incomplete batch unless ``drop_last``
    says otherwise.

    Under torchrun (world size W > 1) ``batch_size`` stays the global batch: train loaders
    yield each rank's slice of the single-process global batches, evaluation loaders a
    contiguous block per rank (the trainer gathers the outputs).
    """
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                            n_domain=n_domain, n_ins=n_ins)
    if is_train:
        sampler = SeededItemSampler(sampler)  # per-item augmentation seeds: same batches on any number of ranks
    wrapper = dataset_wrapper or DatasetWrapper
    if wrapper is DatasetWrapper:
        dataset = wrapper(cfg, data_source, transform=tfm, is_train=is_train, num_classes=num_classes)
    else:
        dataset = wrapper(cfg, data_source, transform=tfm, is_train=is_train)
    num_workers = cfg.DATALOADER.NUM_WORKERS
    if drop_last is None:  # Dassl: training drops the last incomplete batch (when there is a full one)
        drop_last = is_train and len(data_source) >= batch_size
    world_size, rank = get_world_size(), get_rank()
    batching = dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    if world_size > 1 and is_train:
        batching = dict(batch_sampler=ShardedBatchSampler(sampler, batch_size, drop_last, rank, world_size))
    elif world_size > 1:
        batching = dict(batch_size=batch_size, sampler=ContiguousShardSampler(len(data_source), rank, world_size))
    loader = torch.utils.data.DataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        persistent_workers=num_workers > 0 and cfg.DATALOADER.PERSISTENT_WORKERS,
        **batching,
    )
    if len(loader) == 0 and world_size == 1:
        raise ValueError(f"empty data loader ({len(data_source)} samples, batch size {batch_size})")
    return loader


class DataManager:
    """Builds the dataset and its train_x / train_u / val / test loaders from ``cfg``."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        # Building the dataset may draw few-shot subsets from the seeded RNGs, or read them from a cache; the RNG
        # states are restored after, so what follows (model init, batches) is the same in both cases.
        with preserved_rngs():
            dataset = postprocess_dataset(build_dataset(cfg), cfg)  # registered steps, e.g. label noise
        if not dataset.train_x and not dataset.test:
            folder = getattr(dataset, "dataset_dir", "") or cfg.DATASET.ROOT
            raise ValueError(f"{cfg.DATASET.NAME}: no images found under {folder}; check the folder and "
                             "DATASET.ROOT (--root)")
        multilabel = bool(dataset.train_x) and dataset.train_x[0].is_multilabel
        n_cls = dataset.num_classes if multilabel else None

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            logger.info("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            logger.info("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        self.cfg, self._dataset_wrapper, self._n_cls = cfg, dataset_wrapper, n_cls
        self.tfm_train, self.tfm_test = tfm_train, tfm_test
        self.split_items = {"train_x": dataset.train_x, "val": dataset.val, "test": dataset.test}
        self.train_loader_x = self._split_loader("train_x", dataset.train_x)

        self.train_loader_u = None
        if dataset.train_u:
            u = cfg.DATALOADER.TRAIN_X if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=u.SAMPLER, data_source=dataset.train_u, batch_size=u.BATCH_SIZE,
                n_domain=u.N_DOMAIN, n_ins=u.N_INS, tfm=tfm_train, is_train=True,
                dataset_wrapper=dataset_wrapper, num_classes=n_cls)

        self.val_loader = self._split_loader("val", dataset.val) if dataset.val else None
        self.test_loader = self._split_loader("test", dataset.test)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    def _split_loader(self, split: str, items, drop_last: Optional[bool] = None):
        """The loader of ``split`` (train_x, val or test) over ``items``, with the config's settings."""
        cfg = self.cfg
        if split == "train_x":
            x = cfg.DATALOADER.TRAIN_X
            return build_data_loader(
                cfg, sampler_type=x.SAMPLER, data_source=items, batch_size=x.BATCH_SIZE, n_domain=x.N_DOMAIN,
                n_ins=x.N_INS, tfm=self.tfm_train, is_train=True, dataset_wrapper=self._dataset_wrapper,
                num_classes=self._n_cls, drop_last=drop_last)
        t = cfg.DATALOADER.TEST
        return build_data_loader(
            cfg, sampler_type=t.SAMPLER, data_source=items, batch_size=t.BATCH_SIZE, tfm=self.tfm_test,
            is_train=False, dataset_wrapper=self._dataset_wrapper, num_classes=self._n_cls, drop_last=drop_last)

    def set_split(self, split: str, items, drop_last: Optional[bool] = None) -> None:
        """Rebuild the loader of ``split`` (train_x, val or test) over ``items`` with the same settings.

        For trainers that train on part of the training set (a held-out val split) or keep the last
        incomplete training batch (``drop_last=False``).  ``split_items[split]`` then holds ``items``.
        """
        if split not in self.split_items:
            raise KeyError(f"DataManager.set_split: unknown split {split!r}; choose one of {list(self.split_items)}")
        self.split_items[split] = items
        loader = self._split_loader(split, items, drop_last)
        setattr(self, {"train_x": "train_loader_x", "val": "val_loader", "test": "test_loader"}[split], loader)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg) -> None:
        dataset = self.dataset
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(dataset.train_x):,}"])
        if dataset.train_u:
            table.append(["# train_u", f"{len(dataset.train_u):,}"])
        if dataset.val:
            table.append(["# val", f"{len(dataset.val):,}"])
        table.append(["# test", f"{len(dataset.test):,}"])
        logger.info(tabulate(table))


@contextlib.contextmanager
def preserved_rngs():
    """Python's, NumPy's and torch's global CPU RNG states are as they were after the body."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Python's, NumPy's and torch's global CPU RNGs seeded with ``seed`` inside, restored on exit (the CUDA
    generators, which image transforms do not use, are left alone)."""
    with preserved_rngs():
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        yield


class DatasetWrapper(TorchDataset):
    """Reads one ``Datum`` and returns ``{img, label, domain, impath, index}`` (+ ``img0``, ``img2``…).

    Multi-label data (a tuple label) gets a multi-hot float vector of length ``num_classes``.
    Single-label data also carries ``true_label`` (the clean label when noise was injected).
    """

    def __init__(self, cfg, data_source, transform=None, is_train: bool = False, num_classes: Optional[int] = None):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.num_classes = num_classes
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        # Decoded images of small splits (few-shot training sets) stay in memory: decoding
        # full-resolution files dominates the loading time of a few-shot epoch.
        self._image_cache = {} if 0 < len(data_source) <= cfg.DATALOADER.CACHE_IMAGES_MAX else None
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")
        interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor = [Resize(tuple(cfg.INPUT.SIZE), interpolation=interp_mode), ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def _label(self, label):
        if isinstance(label, (tuple, list)):
            vec = torch.zeros(self.num_classes, dtype=torch.float32)
            vec[list(label)] = 1.0
            return vec
        return label

    def __getitem__(self, key):
        """``key`` is an index, or ``(index, seed)`` from ``SeededItemSampler``: the item's random transforms
        then draw from RNGs seeded with ``seed`` (and the caller's RNG states are left as they were)."""
        if isinstance(key, tuple):
            idx, seed = key
            with seeded_rngs(seed):
                return self._get(idx)
        return self._get(key)

    def _get(self, idx: int):
        item = self.data_source[idx]
        output = {"label": self._label(item.label), "domain": item.domain, "impath": item.impath, "index": idx}
        if not item.is_multilabel:
            output["true_label"] = item.true_label
        img0 = self._read(idx, item.impath)
        if self.transform is not None:
            if isinstance(self.transform, (list, tuple)):
                for i, tfm in enumerate(self.transform):
                    keyname = "img" if i == 0 else f"img{i + 1}"
                    output[keyname] = self._transform_image(tfm, img0)
            else:
                output["img"] = self._transform_image(self.transform, img0)
        else:
            output["img"] = img0
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _read(self, idx: int, impath: str):
        if self._image_cache is None:
            return read_image(impath)
        if idx not in self._image_cache:
            self._image_cache[idx] = read_image(impath)
        return self._image_cache[idx]

    def _transform_image(self, tfm, img0):
        img_list = [tfm(img0) for _ in range(self.k_tfm)]
        return img_list[0] if len(img_list) == 1 else img_list
