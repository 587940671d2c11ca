"""Batch normalisation over the global batch under torchrun, on CPU (gloo) as well as on GPUs.

With one process, a BatchNorm layer normalises with the statistics of the whole batch.  Under torchrun each
rank sees only its slice, so plain BatchNorm would normalise with per-rank statistics and the run would differ
from the single-process one.  ``torch.nn.SyncBatchNorm`` fixes that on GPUs only; ``CrossRankBatchNorm`` does
the same anywhere: per-channel sums are all-reduced (differentiably) to the global mean and biased variance,
and the running statistics are updated with the global values, as one process would.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

__all__ = ["CrossRankBatchNorm", "convert_to_cross_rank_batchnorm"]


class CrossRankBatchNorm:
    """Mixin for BatchNorm classes: training-mode statistics span every rank (same parameters and keys)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))  # all but the channel dimension
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = dist_fn.all_reduce(x.sum(dims)) / count  # (C,)
        centered = x - mean.view(shape)
        var = dist_fn.all_reduce(centered.pow(2).sum(dims)) / count  # (C,), biased, as used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * count / max(count.item() - 1, 1.0)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        out = centered / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class CrossRankBatchNorm1d(CrossRankBatchNorm, nn.BatchNorm1d):
    pass


class CrossRankBatchNorm2d(CrossRankBatchNorm, nn.BatchNorm2d):
    pass


class CrossRankBatchNorm3d(CrossRankBatchNorm, nn.BatchNorm3d):
    pass


_CROSS_RANK = {nn.BatchNorm1d: CrossRankBatchNorm1d, nn.BatchNorm2d: CrossRankBatchNorm2d,
               nn.BatchNorm3d: CrossRankBatchNorm3d}


def convert_to_cross_rank_batchnorm(module: nn.Module) -> nn.Module:
    """Switch every plain BatchNorm layer of ``module`` to its cross-rank class, in place (state-dict keys and
    values are unchanged, so checkpoints stay interchangeable with single-process runs)."""
    for layer in module.modules():
        if type(layer) in _CROSS_RANK:
            layer.__class__ = _CROSS_RANK[type(layer)]
    return module
