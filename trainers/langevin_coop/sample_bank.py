"""The FIFO bank of prompt samples that LangevinCoOp's ensemble votes with, in memory and on disk.

The reference keeps its bank in RAM only, so a crash or a later evaluation loses it; here every sample is
also a file ``<directory>/sample_epoch_<EEEEE>.pth`` (written atomically), so a resumed run and
``--eval-only`` find the same window again.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from dassl.utils.safe_pickle import torch_load_weights

logger = logging.getLogger(__name__)

SAMPLE_FILE = re.compile(r"^sample_epoch_(\d+)\.pth$")


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: readers never see a partial file."""
    os.makedirs(osp.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class SampleBank:
    """The last ``capacity`` samples of a trajectory, in RAM and as ``<directory>/sample_epoch_<EEEEE>.pth``.

    ``add`` writes the sample's file (atomically) and moves the in-memory window; evicted files stay on disk
    until ``prune`` (call it after a checkpoint), so a run resumed from any checkpoint finds its window again
    with ``restore(before_epoch=<first epoch to re-run>)``.

    Args:
        directory: where the sample files live.
        capacity: K, the number of samples kept.
        persist: write and delete files; False keeps the window in memory only (the other ranks under
            torchrun: they hold the same samples as rank 0, which alone writes).
    """

    def __init__(self, directory: str, capacity: int, persist: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"SampleBank capacity={capacity}; it must be >= 1")
        self.directory = directory
        self.capacity = capacity
        self.persist = persist
        self._samples: "OrderedDict[int, Dict[str, Tensor]]" = OrderedDict()  # epoch -> state dict, oldest first

    def path(self, epoch: int) -> str:
        return osp.join(self.directory, f"sample_epoch_{epoch:05d}.pth")

    def files(self) -> Dict[int, str]:
        """Sample files on disk by epoch."""
        if not osp.isdir(self.directory):
            return {}
        found = {}
        for name in os.listdir(self.directory):
            match = SAMPLE_FILE.match(name)
            if match:
                found[int(match.group(1))] = osp.join(self.directory, name)
        return found

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def is_full(self) -> bool:
        return len(self._samples) == self.capacity

    @property
    def epochs(self) -> List[int]:
        """Epochs of the samples in the window, oldest first."""
        return list(self._samples)

    def items(self) -> List[Tuple[int, Dict[str, Tensor]]]:
        """``(epoch, state_dict)`` pairs, oldest first."""
        return list(self._samples.items())

    def add(self, epoch: int, state_dict: Dict[str, Tensor]) -> None:
        """Store a copy of ``state_dict`` (on the CPU) as the sample of ``epoch``; drop the oldest when full."""
        if self._samples and epoch <= next(reversed(self._samples)):
            raise ValueError(f"SampleBank.add: epoch {epoch} is not after the newest sample "
                             f"({next(reversed(self._samples))}); restore() the bank before re-running epochs")
        state = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
        if self.persist:
            atomic_save({"epoch": epoch, "state_dict": state}, self.path(epoch))
        self._samples[epoch] = state
        while len(self._samples) > self.capacity:
            self._samples.popitem(last=False)

    def restore(self, before_epoch: Optional[int] = None) -> None:
        """Reload the window from disk: the last ``capacity`` files with epoch < ``before_epoch`` (None = all)."""
        files = self.files()
        epochs = sorted(e for e in files if before_epoch is None or e < before_epoch)[-self.capacity:]
        self._samples = OrderedDict()
        for epoch in epochs:
            entry = torch_load_weights(files[epoch], map_location="cpu")
            if not isinstance(entry, dict) or not isinstance(entry.get("state_dict"), dict):
                raise KeyError(f"{files[epoch]}: expected a sample file holding a state_dict; delete it or the "
                               f"whole {self.directory} folder to drop the ensemble")
            self._samples[epoch] = entry["state_dict"]
        if epochs:
            logger.info(f"Sample bank: restored {len(epochs)} samples (epochs {epochs[0]}-{epochs[-1]}) "
                        f"from {self.directory}")

    def prune(self) -> None:
        """Delete sample files outside the current window (safe once a checkpoint covers the window)."""
        if not self.persist:
            return
        for epoch, path in self.files().items():
            if epoch not in self._samples:
                os.remove(path)
