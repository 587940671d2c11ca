"""Mixup / CutMix of a whole batch with soft targets, as DISEF trains (timm's ``Mixup`` in "batch" mode).

Zhang et al., "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412; Yun et al., "CutMix: Regularization
Strategy to Train Strong Classifiers with Localizable Features", arXiv:1905.04899.  With probability ``prob`` a
batch is mixed, by CutMix with probability ``switch_prob`` when both alphas are positive, with
``lam ~ Beta(alpha, alpha)``; row ``i`` is mixed with row ``B - 1 - i``: mixup ``lam x + (1 - lam) x_rev``, CutMix
pastes a box of ``x_rev`` covering about ``1 - lam`` of the image and ``lam`` becomes one minus the pasted area.
Targets are ``lam t(y) + (1 - lam) t(y_rev)`` with label smoothing folded in (``t`` puts ``1 - eps + eps / K`` on the
class and ``eps / K`` elsewhere) and the loss is the soft-target cross-entropy.  Random numbers come from NumPy's
global generator in timm's order, so a seeded run mixes as timm would.  Under torchrun the partner row is taken
from the reversed global batch (gathered from every rank), so each rank mixes its slice exactly as one process
mixes the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from dassl.utils import all_gather_object, get_rank, is_distributed


@dataclass(frozen=True)
class MixParams:
    """One batch's draw: ``lam`` (1 = unmixed) and, for CutMix, the pasted box ``(y0, y1, x0, x1)``."""

    lam: float
    box: Optional[tuple[int, int, int, int]] = None


def reversed_partner(x: Tensor) -> Tensor:
    """Row ``i`` of the result is row ``N - 1 - i`` of the global batch (``N`` rows over all ranks, in rank order)
    for this rank's rows ``x``; in one process simply ``x.flip(0)``.  Ranks may hold different numbers of rows (the
    last, partial batch of a loader)."""
    if not is_distributed():
        return x.flip(0)
    sizes = [int(n) for n in all_gather_object(x.shape[0])]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[:x.shape[0]] = x  # all_gather needs one shape on every rank
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    full = torch.cat([part[:n] for part, n in zip(parts, sizes)])  # (N, ...)
    start = sum(sizes[:get_rank()])
    return full.flip(0)[start:start + x.shape[0]]


def global_sum(values: Tensor) -> Tensor:
    """``values`` summed over all ranks (unchanged in one process)."""
    if not is_distributed():
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def smoothed_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """``(B, K)`` targets: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K`` elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """``-sum_k targets_k log softmax(logits)_k`` per row ``(B,)``, then its mean or sum."""
    per_row = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1)  # (B,)
    return per_row.mean() if reduction == "mean" else per_row.sum()


class BatchMixer:
    """``(images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, K))``."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("BatchMixer needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.label_smoothing = label_smoothing

    def draw(self, height: int, width: int) -> MixParams:
        """The batch's ``lam`` and CutMix box, drawn from NumPy's global generator in timm's order."""
        lam, use_cutmix = 1.0, False
        if np.random.rand() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = np.random.rand() < self.switch_prob
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            else:
                use_cutmix = self.mixup_alpha <= 0
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(np.random.beta(alpha, alpha))
        if lam == 1.0 or not use_cutmix:
            return MixParams(lam)
        return cutmix_box(height, width, lam)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        params = self.draw(images.shape[-2], images.shape[-1])
        targets = smoothed_one_hot(labels, self.num_classes, self.label_smoothing)  # (B, K)
        if params.lam == 1.0:
            return images, targets
        partner = reversed_partner(images)
        if params.box is None:
            mixed = images * params.lam + partner * (1.0 - params.lam)
        else:
            y0, y1, x0, x1 = params.box
            mixed = images.clone()
            mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        partner_targets = smoothed_one_hot(reversed_partner(labels), self.num_classes, self.label_smoothing)
        return mixed, targets * params.lam + partner_targets * (1.0 - params.lam)


def cutmix_box(height: int, width: int, lam: float) -> MixParams:
    """A box of about ``(1 - lam)`` of the image around a uniform centre, clipped to the image; ``lam`` corrected
    to one minus the clipped box's area share."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = np.random.randint(0, height), np.random.randint(0, width)
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    return MixParams(1.0 - (y1 - y0) * (x1 - x0) / float(height * width), (y0, y1, x0, x1))
