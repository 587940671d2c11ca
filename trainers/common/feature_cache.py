"""On-disk cache of frozen image features, shared across epochs, seeds, shots and trainers.

A grid of runs with a frozen image encoder re-encodes the same evaluation images in every run;
the physical limit is one encoder pass per image per backbone. An entry is keyed by everything
that changes the features — the backbone name (``MODEL.BACKBONE.NAME``), the encoder weights
(SHA-256 of its state dict), the dataset, the split, the ordered image list and labels, and the
transform's repr — so any change makes a new entry.  File names start with the dataset, the split
and a short label of the backbone (``Caltech101-test-open_clip-ViT-B-16-laion2b_s34b_b88k-<hash>.pt``),
so a cache folder shows what each entry holds. Entries are written to a temp file and renamed, so
concurrent runs (a grid, torchrun ranks) never read a partial file: the last rename wins and every
reader sees one valid file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import os.path as osp
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.utils import barrier, broadcast_object, is_main_process
from dassl.utils.safe_pickle import torch_load_weights
from vlprompt.clip.backbones import backbone_label

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: the backbone name is part of the key


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TEST.FEATURE_CACHE = CN()
    # Reuse image features of evaluation splits across runs when the image encoder is frozen
    cfg.TEST.FEATURE_CACHE.ENABLED = True
    # Cache folder ("" = $VLPROMPT_CACHE/features or ~/.cache/vlprompt/features)
    cfg.TEST.FEATURE_CACHE.DIR = ""


def default_cache_dir() -> str:
    base = os.environ.get("VLPROMPT_CACHE", osp.join(osp.expanduser("~"), ".cache", "vlprompt"))
    return osp.join(base, "features")


def module_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def items_digest(impaths: Sequence[str], labels: Iterable) -> str:
    """SHA-256 of the ordered (path, label) list."""
    h = hashlib.sha256()
    for path, label in zip(impaths, labels):
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()


class FeatureCache:
    """Get-or-compute store of ``{"features": Tensor[N, D], "labels": Tensor[N...]}`` entries."""

    def __init__(self, root: str = "", enabled: bool = True):
        self.root = root or default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(encoder_digest: str, dataset: str, split: str, image_digest: str, transform: str,
                 backbone: str = "") -> str:
        """``<dataset>-<split>[-<backbone label>]-<hash>``: the hash covers every part, the full backbone
        name included (the label is only a readable, possibly shortened, file-name form of it)."""
        h = hashlib.sha256()
        for part in (f"v{CACHE_FORMAT_VERSION}", backbone, encoder_digest, dataset, split, image_digest, transform):
            h.update(part.encode())
            h.update(b"\0")
        label = f"-{backbone_label(backbone)}" if backbone else ""
        return f"{dataset}-{split}{label}-{h.hexdigest()[:32]}"

    def path(self, key: str) -> str:
        return osp.join(self.root, f"{key}.pt")

    def load(self, key: str) -> Optional[Dict[str, torch.Tensor]]:
        path = self.path(key)
        if not self.enabled or not osp.exists(path):
            return None
        try:  # tensors only (weights_only=True): an entry copied from elsewhere cannot run code
            entry = torch_load_weights(path, map_location="cpu")
        except ValueError as err:  # refused or corrupt (one-line message naming the file): recompute, never trust
            logger.warning(f"{err.args[0]}; recomputing the feature cache entry")
            return None
        keys = ("features", "labels")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), torch.Tensor) for k in keys):
            logger.warning(f"feature cache entry {path} lacks 'features'/'labels' tensors; recomputing it")
            return None
        return entry

    def save(self, key: str, entry: Dict[str, torch.Tensor]) -> None:
        if not self.enabled:
            return
        os.makedirs(self.root, exist_ok=True)
        path = self.path(key)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(entry, tmp)
        os.replace(tmp, path)

    def get_or_compute(self, key: str, compute: Callable[[], Tuple[torch.Tensor, torch.Tensor]]
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) from the cache, or from ``compute()`` (then stored).

        Under torchrun every rank calls this with the same key: rank 0 decides hit or miss for all of them
        (so no rank reads a half-seen entry), ``compute`` runs on every rank (each encodes its shard and
        gathers the rest) and only rank 0 writes the entry, while the others wait for it.
        """
        hit = broadcast_object(self.load(key) is not None if is_main_process() else None)
        entry = self.load(key) if hit else None
        if entry is not None:
            self.hits += 1
            logger.info(f"Feature cache hit: {self.path(key)}")
            return entry["features"], entry["labels"]
        self.misses += 1
        features, labels = compute()
        if self.enabled and is_main_process():
            logger.info(f"Feature cache miss: encoded {len(features)} images, saved to {self.path(key)}")
            self.save(key, {"features": features.cpu(), "labels": labels.cpu()})
        barrier()
        return features, labels
