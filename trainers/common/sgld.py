"""Stochastic-gradient Langevin dynamics (SGLD) and the ensemble built from its trajectory.

Welling & Teh, "Bayesian Learning via Stochastic Gradient Langevin Dynamics", ICML 2011
(https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf).  Written once for any sampling method
(first user: ``trainers/langevin_coop.py``; spec ``shared/specs/langevin_coop.md`` §3, §5.2).

- ``SGLD``: a ``torch.optim.Optimizer``.  With ``g = grad + weight_decay * p`` and ``xi ~ N(0, I)``:

  ============  =====================================================  ==========================================
  noise_mode    update                                                 note
  ============  =====================================================  ==========================================
  ``none``      ``p - lr * g``                                         plain SGD, no momentum
  ``sgld_temp`` ``p - lr * g + sqrt(2 * lr * T) * xi``                 Langevin at temperature T on the loss
  ``ref_small`` ``p - lr * g + (noise_scale * lr) * xi``               the reference's "var_my_noise" (§3)
  ``sgld``      ``p - (lr / 2) * g + sqrt(lr) * xi``                   the reference's "var" (Welling & Teh)
  ============  =====================================================  ==========================================

  ``T = 0`` (or ``lr = 0``) adds no noise and draws nothing.  The noise comes from the optimizer's own
  ``torch.Generator`` on the parameters' device, seeded from ``seed`` or, when none is given, with one draw of
  the global torch RNG (so ``--seed`` makes it reproducible); its state is part of ``state_dict()``, so a
  resumed run continues the same noise stream.  A parameter group with ``noise=False`` gets the update
  without noise, i.e. noise goes only where the caller puts it.
- ``SampleBank``: FIFO of the last K parameter samples, one file each (written atomically), restorable after
  a restart; files leave the disk only once a checkpoint no longer needs them (``prune``).
- ``VoteAccumulator`` / ``hard_vote`` / ``soft_vote``: majority vote over the samples' argmax labels (ties ->
  lowest class index, as the reference) and the mean-probability vote.
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

NOISE_MODES = ("none", "sgld_temp", "ref_small", "sgld")
_SEED_BOUND = 2 ** 62  # generator seeds are drawn in [0, 2^62)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: readers never see a partial file."""
    os.makedirs(osp.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def step_coefficients(noise_mode: str, lr: float, temperature: float = 1.0, noise_scale: float = 1e-5
                      ) -> Tuple[float, float]:
    """``(gradient step size, noise std)`` of one update: ``p <- p - a * g + s * xi`` returns ``(a, s)``."""
    if noise_mode == "none":
        return lr, 0.0
    if noise_mode == "sgld_temp":
        if temperature < 0:
            raise ValueError(f"SGLD temperature={temperature}; it must be >= 0")
        return lr, math.sqrt(2.0 * lr * temperature)
    if noise_mode == "ref_small":
        return lr, noise_scale * lr
    if noise_mode == "sgld":
        return lr / 2.0, math.sqrt(lr)
    raise ValueError(f"SGLD noise_mode={noise_mode!r}; choose one of {', '.join(NOISE_MODES)}")


class SGLD(Optimizer):
    """Stochastic-gradient Langevin dynamics; see the module docstring for the update of each ``noise_mode``.

    Args:
        params: parameters or parameter groups (a group may set ``noise=False`` and any of the options below).
        lr: step size (>= 0).
        weight_decay: L2 coefficient added to the gradient, ``g = grad + weight_decay * p``.
        noise_mode: one of ``NOISE_MODES``.
        temperature: ``T`` of ``sgld_temp`` (0 = plain SGD).
        noise_scale: the ``ref_small`` factor (reference: 1e-5).
        seed: seed of the noise generator; ``None`` draws one from the global torch RNG.
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, noise_mode: str = "sgld_temp",
                 temperature: float = 1.0, noise_scale: float = 1e-5, seed: Optional[int] = None) -> None:
        if lr < 0:
            raise ValueError(f"SGLD lr={lr}; it must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"SGLD weight_decay={weight_decay}; it must be >= 0")
        step_coefficients(noise_mode, 0.0, temperature, noise_scale)  # validates mode and temperature
        defaults = dict(lr=lr, weight_decay=weight_decay, noise_mode=noise_mode, temperature=temperature,
                        noise_scale=noise_scale, noise=True)
        super().__init__(params, defaults)
        self.seed = int(torch.randint(0, _SEED_BOUND, (1,)).item()) if seed is None else int(seed)
        self._generator: Optional[torch.Generator] = None
        self._pending_rng_state: Optional[Tensor] = None

    def set_noise_mode(self, noise_mode: str) -> None:
        """Switch every group to ``noise_mode`` (e.g. ``none`` during burn-in)."""
        step_coefficients(noise_mode, 0.0)
        for group in self.param_groups:
            group["noise_mode"] = noise_mode

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            if self._pending_rng_state is not None:
                self._generator.set_state(self._pending_rng_state)
                self._pending_rng_state = None
        return self._generator

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            grad_step, noise_std = step_coefficients(group["noise_mode"], group["lr"], group["temperature"],
                                                     group["noise_scale"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])  # g = grad + wd * p (grad left untouched)
                p.add_(d_p, alpha=-grad_step)
                if group["noise"] and noise_std > 0:
                    xi = torch.randn(p.shape, generator=self._noise_generator(p.device), device=p.device,
                                     dtype=p.dtype)
                    p.add_(xi, alpha=noise_std)
        return loss

    # The generator is state too: a resumed run must continue the same noise stream.
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        rng = self._generator.get_state() if self._generator is not None else self._pending_rng_state
        state["sgld_rng"] = {"seed": self.seed, "state": rng}
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("sgld_rng", None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self.seed = int(rng["seed"])
            self._generator = None
            self._pending_rng_state = rng["state"]


# ----------------------------------------------------------------------------------------------- sample bank
_SAMPLE_FILE = re.compile(r"^sample_epoch_(\d+)\.pth$")


class SampleBank:
    """The last ``capacity`` samples of a trajectory, in RAM and as ``<directory>/sample_epoch_<EEEEE>.pth``.

    ``add`` writes the sample's file (atomically) and moves the in-memory window; evicted files stay on disk
    until ``prune`` (call it after a checkpoint), so a run resumed from any checkpoint finds its window again
    with ``restore(before_epoch=<first epoch to re-run>)``.
    """

    def __init__(self, directory: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"SampleBank capacity={capacity}; it must be >= 1")
        self.directory = directory
        self.capacity = capacity
        self._samples: "OrderedDict[int, Dict[str, Tensor]]" = OrderedDict()  # epoch -> state dict, oldest first

    def path(self, epoch: int) -> str:
        return osp.join(self.directory, f"sample_epoch_{epoch:05d}.pth")

    def _files(self) -> Dict[int, str]:
        if not osp.isdir(self.directory):
            return {}
        found = {}
        for name in os.listdir(self.directory):
            match = _SAMPLE_FILE.match(name)
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
        atomic_save({"epoch": epoch, "state_dict": state}, self.path(epoch))
        self._samples[epoch] = state
        while len(self._samples) > self.capacity:
            self._samples.popitem(last=False)

    def restore(self, before_epoch: Optional[int] = None) -> None:
        """Reload the window from disk: the last ``capacity`` files with epoch < ``before_epoch`` (None = all)."""
        files = self._files()
        epochs = sorted(e for e in files if before_epoch is None or e < before_epoch)[-self.capacity:]
        self._samples = OrderedDict()
        for epoch in epochs:
            entry = torch.load(files[epoch], map_location="cpu", weights_only=True)
            self._samples[epoch] = entry["state_dict"]
        if epochs:
            logger.info(f"Sample bank: restored {len(epochs)} samples (epochs {epochs[0]}-{epochs[-1]}) "
                        f"from {self.directory}")

    def prune(self) -> None:
        """Delete sample files outside the current window (safe once a checkpoint covers the window)."""
        for epoch, path in self._files().items():
            if epoch not in self._samples:
                os.remove(path)


# ----------------------------------------------------------------------------------------------------- votes
class VoteAccumulator:
    """Running hard-vote counts and soft-vote probability sums over ensemble members.

    Args:
        num_items: number of test items N.
        num_classes: C.
        device: where the ``(N, C)`` accumulators live.
    """

    def __init__(self, num_items: int, num_classes: int, device: Optional[torch.device] = None) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_items, num_classes, dtype=torch.long, device=device)  # (N, C)
        self.prob_sum = torch.zeros(num_items, num_classes, dtype=torch.float64, device=device)  # (N, C)
        self.num_members = 0

    def add_labels(self, labels: Tensor) -> None:
        """One member's predicted labels ``(N,)``."""
        self.counts.scatter_add_(1, labels.view(-1, 1), torch.ones_like(labels).view(-1, 1))
        self.num_members += 1

    def add_logits(self, logits: Tensor) -> None:
        """One member's logits ``(N, C)``: its argmax is its vote, its softmax joins the soft vote."""
        self.add_labels(logits.argmax(dim=1))
        self.prob_sum += logits.double().softmax(dim=1)

    def hard(self) -> Tensor:
        """Majority label ``(N,)``; a tie goes to the lowest class index."""
        index = torch.arange(self.num_classes, device=self.counts.device)
        key = self.counts * self.num_classes - index  # (N, C): higher count first, then lower index
        return key.argmax(dim=1)

    def soft(self) -> Tensor:
        """Label of the highest mean probability ``(N,)``."""
        return self.prob_sum.argmax(dim=1)


def hard_vote(votes: Tensor, num_classes: int) -> Tensor:
    """Majority vote of ``votes`` ``(K, N)`` (K members' labels) -> ``(N,)``; ties -> lowest class index."""
    acc = VoteAccumulator(votes.shape[1], num_classes, votes.device)
    for member in votes:
        acc.add_labels(member)
    return acc.hard()


def soft_vote(probs: Tensor) -> Tensor:
    """Argmax of the mean of ``probs`` ``(K, N, C)`` over the K members -> ``(N,)``."""
    return probs.mean(dim=0).argmax(dim=1)
