"""Augmented views of the few-shot training images for Tip-Adapter's cache, encoded once and cached on disk.

The reference builds its keys from ``augment_epoch`` (10) passes over the training images under the training
transform (random resized crop, scale 0.5-1, and flip), keeping the image tower's un-normalised outputs.  Here
view ``v`` of item ``i`` is transformed with the seed ``item_seed(view_base(seed, v), i)``, so the views depend
only on the run's seed, the image list, the transform and ``v`` — not on the RNG state, the number of ranks or
the data workers — and the ``(A, N, E)`` outputs go to the feature cache under a key naming all of them.  A grid
over shots x seeds therefore encodes each (seed, shots, backbone, number of views) set once; Tip-Adapter and
Tip-Adapter-F share it.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from dassl.data.data_manager import DatasetWrapper
from dassl.data.samplers import ContiguousShardSampler, item_seed
from dassl.utils import all_gather_object, get_rank, get_world_size, is_distributed, is_main_process, progress

from ..common.feature_cache import FeatureCache, items_digest, module_digest


def view_base(seed: int, view: int) -> int:
    """The augmentation base number of view ``view`` of a run seeded ``seed`` (a fixed hash of both)."""
    digest = hashlib.sha256(f"tip-adapter-view|{seed}|{view}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2 ** 31 - 1)


class ViewSeedSampler(Sampler):
    """This rank's contiguous block of item indices, each paired with its augmentation seed: ``(i, seed)``."""

    def __init__(self, n_items: int, base: int) -> None:
        self.indices = list(ContiguousShardSampler(n_items, get_rank(), get_world_size()))
        self.base = base

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter((i, item_seed(self.base, i)) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def views_key(image_encoder: nn.Module, dataset: str, items: Sequence, transform, seed: int, n_views: int) -> str:
    """Cache key of the views: encoder weights, dataset, image list, training transform, seed and view count."""
    image_digest = items_digest([item.impath for item in items], [item.label for item in items])
    return FeatureCache.make_key(module_digest(image_encoder), dataset, f"train_x-views{n_views}-seed{seed}",
                                 image_digest, repr(transform))


@torch.no_grad()
def encode_views(cfg, model: nn.Module, items: Sequence, transform, seed: int, n_views: int,
                 device: torch.device) -> Tuple[Tensor, Tensor]:
    """Image-tower outputs ``(A, N, E)`` of ``n_views`` augmented passes over ``items`` and their labels ``(N,)``.

    Under torchrun each rank encodes its block of every view and the blocks are gathered in rank order.
    """
    dataset = DatasetWrapper(cfg, items, transform=transform, is_train=False)
    views, labels = [], None
    for view in range(n_views):
        loader = DataLoader(dataset, batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
                            sampler=ViewSeedSampler(len(items), view_base(seed, view)),
                            num_workers=cfg.DATALOADER.NUM_WORKERS)
        features, view_labels = [], []
        for batch in progress(loader, f"cache view {view + 1}/{n_views}", enabled=is_main_process()):
            image = batch["img"].to(device)
            features.append(model.image_encoder(image.to(model.dtype)).cpu())  # (B, E), not normalised
            view_labels.append(batch["label"])
        block = (torch.cat(features) if features else None, torch.cat(view_labels) if view_labels else None)
        if is_distributed():
            blocks = [b for b in all_gather_object(block) if b[0] is not None]
            block = (torch.cat([f for f, _ in blocks]), torch.cat([y for _, y in blocks]))
        views.append(block[0])
        labels = block[1]
    return torch.stack(views), labels  # (A, N, E), (N,)
