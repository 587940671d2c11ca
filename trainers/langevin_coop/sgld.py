"""Stochastic-gradient Langevin dynamics (SGLD), the optimizer of LangevinCoOp.

Welling & Teh, "Bayesian Learning via Stochastic Gradient Langevin Dynamics", ICML 2011.  With
``g = grad + weight_decay * p`` and ``xi ~ N(0, I)`` one step of each ``noise_mode`` is:

============  =====================================================  ==========================================
noise_mode    update                                                 note
============  =====================================================  ==========================================
``none``      ``p - lr * g``                                         plain SGD, no momentum
``sgld_temp`` ``p - lr * g + sqrt(2 * lr * T) * xi``                 Langevin at temperature T on the loss
``ref_small`` ``p - lr * g + (noise_scale * lr) * xi``               the reference's ``var_my_noise`` mode
``sgld``      ``p - (lr / 2) * g + sqrt(lr) * xi``                   the reference's ``var`` mode (Welling & Teh)
============  =====================================================  ==========================================

``T = 0`` (or ``lr = 0``) adds no noise and draws nothing.  The noise comes from the optimizer's own
``torch.Generator`` on the parameters' device, seeded from ``seed`` (``draw_noise_seed()`` takes one from the
global torch RNG, so ``--seed`` makes a run reproducible); its state is part of ``state_dict()``, so a resumed
run continues the same noise stream.  Under torchrun every rank builds the generator from the same seed and
steps it on the same (averaged) gradients, so every rank draws the same noise.  A parameter group with
``noise=False`` gets the update without noise: noise goes only where the caller puts it.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

NOISE_MODES = ("none", "sgld_temp", "ref_small", "sgld")
SEED_BOUND = 2 ** 62  # generator seeds are drawn in [0, 2^62)


def draw_noise_seed() -> int:
    """A generator seed drawn from the global torch RNG (one draw)."""
    return int(torch.randint(0, SEED_BOUND, (1,)).item())


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
        seed: seed of the noise generator; ``None`` draws one with ``draw_noise_seed()``.
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
        self.seed = draw_noise_seed() if seed is None else int(seed)
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
