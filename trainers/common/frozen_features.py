"""``FrozenFeatureTrainer``: a CLIP trainer that fits on the frozen image features of whole splits.

The few-shot baselines that learn nothing inside CLIP — the linear probe (``trainers/linear_probe.py``) and
Tip-Adapter (``trainers/tip_adapter/``) — need the image features of the training and validation images under
the test transform, not just of the test split.  This base class gives them those features through the same
on-disk ``FeatureCache`` that ``ClipPromptTrainer.test`` uses (same key: image-tower weights, dataset, split,
ordered image list, transform), so a grid over seeds and shots encodes each image once per backbone, and a
closed-form fit that runs inside the epoch loop (``fit_once``): fitted in the first epoch a run trains, kept by
later epochs and restored from checkpoints (the module's ``fitted`` flag is part of its state dict).

Every feature pass leaves torch's global RNG as it found it: iterating a ``DataLoader`` draws a seed from it,
and a run that finds its features in the cache must draw the same random numbers afterwards as one that encoded
them.  Under torchrun each rank encodes its block of a split and the blocks are gathered (``encode_split``), so
every rank holds the same features; work on rank 0 only is broadcast by the subclasses.
"""
from __future__ import annotations

import logging
from typing import ClassVar, Tuple

import torch
from torch import Tensor

from dassl.data.data_manager import build_data_loader

from .feature_cache import FeatureCache
from .prompt_trainer import ClipPromptTrainer

logger = logging.getLogger(__name__)

__all__ = ["FrozenFeatureTrainer", "untouched_rng"]


def untouched_rng():
    """Context in which torch's CPU RNG may be used freely: its state is restored on exit."""
    return torch.random.fork_rng(devices=[])


class FrozenFeatureTrainer(ClipPromptTrainer):
    """A ``ClipPromptTrainer`` whose image tower is frozen and un-prompted: features of any split, cached.

    Subclasses implement ``fit()`` (what the first epoch computes) and read the registered module's ``fitted``
    buffer through ``is_fitted()``; ``training_passes`` calls ``fit_once`` by default.
    """

    EVAL_FROM_IMAGE_FEATURES: ClassVar[bool] = True
    FIT_MODULE: ClassVar[str] = ""  # the LEARNABLE path whose ``fitted`` buffer marks a finished fit

    def check_cfg(self, cfg) -> None:
        if cfg.OPTIM.MAX_EPOCH < 1:
            raise ValueError(f"OPTIM.MAX_EPOCH={cfg.OPTIM.MAX_EPOCH}; {type(self).__name__} fits in its first epoch, "
                             "so it needs at least 1")
        super().check_cfg(cfg)

    # ------------------------------------------------------------------ features
    def feature_cache(self) -> FeatureCache:
        """The run's feature cache (``TEST.FEATURE_CACHE``; disabled = compute every time, store nothing)."""
        node = self.cfg.TEST.FEATURE_CACHE
        return FeatureCache(node.DIR, enabled=node.ENABLED)

    @torch.no_grad()
    def split_features(self, split: str) -> Tuple[Tensor, Tensor]:
        """``encode_image`` features ``(N, E)`` (fp32, CPU) and labels ``(N,)`` of ``split`` under the test transform.

        ``split`` is ``train_x``, ``val`` or ``test``; ``val`` falls back to ``test`` when the dataset has none (as
        ``eval_split`` does).  Entries are shared with ``test()`` and with every other trainer of the same image
        tower.
        """
        if split == "train_x":
            items = self.dm.split_items["train_x"]
            loader = build_data_loader(self.cfg, sampler_type="SequentialSampler", data_source=items,
                                       batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE, tfm=self.dm.tfm_test,
                                       is_train=False)
        else:
            split, loader, items = self.eval_split(split)
        with untouched_rng():
            features, labels = self.feature_cache().get_or_compute(self.image_feature_key(split, items),
                                                                   lambda: self.encode_split(split, loader))
        return features.float(), labels

    # ------------------------------------------------------------------ the closed-form fit
    def fit_module(self) -> torch.nn.Module:
        return self.model.get_submodule(self.FIT_MODULE or self.LEARNABLE[0])

    def is_fitted(self) -> bool:
        return bool(self.fit_module().fitted.item())

    def fit(self) -> None:
        """Compute the fitted state (called once per run, in the first epoch trained)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit()")

    def fit_once(self) -> None:
        """``fit()`` unless a checkpoint already holds the fit; then mark the module fitted."""
        if self.is_fitted():
            return
        self.fit()
        self.fit_module().fitted.fill_(True)

    def training_passes(self):
        """Epoch 1 fits; nothing is left to do in later epochs (they only checkpoint)."""
        self.fit_once()
        yield from ()

    def build_optimizer_and_scheduler(self, name, module):
        """A closed-form fit has no optimizer (the checkpoint still holds the fitted tensors)."""
        return None, None
