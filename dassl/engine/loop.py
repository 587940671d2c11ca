"""Pieces of the training loop that trainers use through public names.

- ``TrainingPass``: one pass over a loader with a step function; ``TrainerX.run_epoch`` runs the passes a
  trainer's ``training_passes()`` hook yields (one pass over ``train_loader_x`` by default).
- ``EpochProgress``: Dassl's progress line (``epoch [e/E] batch [b/B] time ... data ... <meters> lr ... eta``)
  and the ``train/*`` tensorboard scalars.
- ``cycle``: an iterator over a loader that starts again when the loader runs out (Dassl's unlabelled batches);
  ``PairedBatches``: ``(batch_x, batch_u)`` pairs of ``TrainerXU``'s epoch.
- ``rank_share``: under torchrun, a rank's share of the current global batch (its loss weight).
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from dassl.utils import AverageMeter, MetricMeter, all_gather_object, get_world_size

__all__ = ["TrainingPass", "EpochProgress", "cycle", "LR_STEP_POLICIES", "PairedBatches", "rank_share"]

logger = logging.getLogger("dassl.engine.trainer")

# When the loop steps the learning-rate schedulers of a pass's models: after the pass's last batch (Dassl),
# after every batch, or never (the trainer sets learning rates itself).
LR_STEP_POLICIES = ("epoch", "iter", "manual")


@dataclass
class TrainingPass:
    """One pass of ``step(batch) -> {meter: value}`` over ``loader``.

    ``names``: the registered models whose schedulers the loop steps for this pass (None = all of them).
    """

    loader: Iterable
    step: Callable[[Any], Mapping[str, float]]
    names: Optional[Sequence[str]] = None


class _Cycle:
    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.iterator = iter(loader)  # started now, as Dassl does: starting a DataLoader draws its seed

    def __iter__(self) -> "_Cycle":
        return self

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)


def cycle(loader: Iterable) -> Iterator:
    """Batches of ``loader`` forever: a new pass starts whenever the previous one runs out.

    The first pass is started at once (not at the first ``next``), so the random draws of starting a
    shuffled loader happen in the same order as in Dassl's ``TrainerXU``.
    """
    return _Cycle(loader)


class EpochProgress:
    """Meters of one pass and Dassl's progress line; ``trainer`` provides cfg, epoch, max_epoch, lr and scalars."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.losses = MetricMeter()
        self.batch_time = AverageMeter()
        self.data_time = AverageMeter()

    def update(self, loss_summary: Mapping[str, float], data_time: float, batch_time: float) -> None:
        self.data_time.update(data_time)
        self.batch_time.update(batch_time)
        self.losses.update(loss_summary)

    def log(self, batch_idx: int, num_batches: int) -> None:
        """Print the progress line every ``TRAIN.PRINT_FREQ`` batches (always for short passes); write scalars."""
        t = self.trainer
        meet_freq = (batch_idx + 1) % t.cfg.TRAIN.PRINT_FREQ == 0
        only_few_batches = num_batches < t.cfg.TRAIN.PRINT_FREQ
        if meet_freq or only_few_batches:
            nb_remain = (num_batches - batch_idx - 1) + (t.max_epoch - t.epoch - 1) * num_batches
            eta = str(datetime.timedelta(seconds=int(self.batch_time.avg * nb_remain)))
            logger.info(
                f"epoch [{t.epoch + 1}/{t.max_epoch}] batch [{batch_idx + 1}/{num_batches}] "
                f"time {self.batch_time.val:.3f} ({self.batch_time.avg:.3f}) "
                f"data {self.data_time.val:.3f} ({self.data_time.avg:.3f}) "
                f"{self.losses} lr {t.get_current_lr():.4e} eta {eta}"
            )
        n_iter = t.epoch * num_batches + batch_idx
        for name, meter in self.losses.meters.items():
            t.write_scalar("train/" + name, meter.avg, n_iter)
        t.write_scalar("train/lr", t.get_current_lr(), n_iter)


def _items_in(batch) -> int:
    """Number of items in a batch: the length of its first tensor (dicts and tuples are searched in order)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        n = _items_in(value)
        if n:
            return n
    return 0


def rank_share(batch) -> float:
    """``n_local * W / n_global`` for this rank's part of the current batch (1.0 in a single process)."""
    world_size = get_world_size()
    if world_size == 1:
        return 1.0
    n_local = _items_in(batch)
    counts = all_gather_object(n_local)
    total = sum(counts)
    return 1.0 if total == n_local * world_size else n_local * world_size / total


class PairedBatches:
    """``(batch_x, batch_u)`` pairs for ``n`` steps from two restarting loaders (TrainerXU's epoch)."""

    def __init__(self, loader_x, loader_u, n: int) -> None:
        self.iter_x, self.iter_u, self.n = cycle(loader_x), cycle(loader_u), n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.iter_x), next(self.iter_u)
