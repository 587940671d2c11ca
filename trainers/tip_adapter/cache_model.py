"""Tip-Adapter's cache model: keys, one-hot values, the affinity-weighted logits and the alpha/beta search.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022,
arXiv:2207.09519 (first version arXiv:2111.03930); reference gaopengcuhk/Tip-Adapter@d0e2d6f (``main.py``,
``utils.py``).

With ``f`` an L2-normalised test feature ``(1, E)``, ``K`` the keys ``(N, E)`` (one L2-normalised feature per
few-shot training image), ``L`` the one-hot values ``(N, C)`` and ``W`` the class text features ``(C, E)``:

    A = exp(-beta (1 - f K^T))                 (1, N)   affinity, in the reference's order -(beta - beta f K^T)
    logits = s f W^T + alpha A L               (1, C)   s = 100 in the reference
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TipCache", "tip_logits", "cache_logits", "search_grid", "search_alpha_beta", "keys_from_views"]

# Rows scored at once in the search: bounds the (alphas x rows x classes) logits tensor to about 64 MB.
SEARCH_ELEMENTS = 2 ** 24


def cache_logits(features: Tensor, keys: Tensor, values: Tensor, beta: float) -> Tensor:
    """``exp(-(beta - beta f K^T)) L`` for features ``(B, E)``, keys ``(N, E)``, values ``(N, C)`` -> ``(B, C)``."""
    affinity = features @ keys.t()  # (B, N)
    return ((-1) * (beta - beta * affinity)).exp() @ values


def tip_logits(features: Tensor, text_features: Tensor, keys: Tensor, values: Tensor, alpha: float, beta: float,
               clip_scale: float) -> Tensor:
    """Tip-Adapter's logits ``s f W^T + alpha exp(-beta (1 - f K^T)) L`` ``(B, C)``."""
    clip = clip_scale * features @ text_features.t()  # (B, C)
    return clip + cache_logits(features, keys, values, beta) * alpha


def keys_from_views(views: Tensor) -> Tensor:
    """Cache keys from the image-tower outputs of ``A`` augmented views ``(A, N, E)``: the mean over views, then
    L2-normalised (the reference averages the un-normalised features)."""
    keys = views.float().mean(dim=0)  # (N, E)
    return keys / keys.norm(dim=-1, keepdim=True)


def one_hot_values(labels: Tensor, n_cls: int) -> Tensor:
    """One-hot values ``(N, C)`` (float32; the reference infers C from the largest label and keeps fp16)."""
    return F.one_hot(labels.long(), n_cls).float()


def search_grid(scale: float, steps: int) -> List[float]:
    """The reference's grid ``[i (scale - 0.1) / steps + 0.1 for i in range(steps)]`` (``scale`` itself excluded)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(features: Tensor, labels: Tensor, clip_logits: Tensor, keys: Tensor, values: Tensor,
                      betas: Sequence[float], alphas: Sequence[float]) -> Tuple[float, float, int]:
    """(beta, alpha, correct): the reference's exhaustive search, best accuracy first met in beta-major order.

    Like the reference, the best count starts at 0 with (0, 0), and a pair replaces it only when strictly better.
    The result equals the reference's double loop; it computes ``f K^T`` once and each beta's cache logits once,
    then scores every alpha of that beta in one batched argmax (the same float operations per element).
    """
    affinity = features @ keys.t()  # (n, N)
    alpha_column = torch.tensor(list(alphas), dtype=clip_logits.dtype, device=clip_logits.device)[:, None, None]
    chunk = max(1, SEARCH_ELEMENTS // max(1, len(alphas) * clip_logits.shape[1]))
    best_correct, best_beta, best_alpha = 0, 0.0, 0.0
    for beta in betas:
        cached = ((-1) * (beta - beta * affinity)).exp() @ values  # (n, C)
        correct = torch.zeros(len(alphas), dtype=torch.long, device=clip_logits.device)
        for start in range(0, len(labels), chunk):
            rows = slice(start, start + chunk)
            logits = clip_logits[None, rows] + cached[None, rows] * alpha_column  # (n_alpha, rows, C)
            correct += (logits.argmax(dim=-1) == labels[None, rows]).sum(dim=1)
        for alpha, count in zip(alphas, correct.tolist()):
            if count > best_correct:
                best_correct, best_beta, best_alpha = count, beta, alpha
    return best_beta, best_alpha, best_correct


class TipCache(nn.Module):
    """The cache model: ``keys`` (a parameter, trained by Tip-Adapter-F), one-hot ``values``, ``alpha``, ``beta``.

    Everything that ``--eval-only`` needs is in the state dict; ``fitted`` marks a built cache.  With
    ``keep_best`` (Tip-Adapter-F's reference epoch selection) it also holds the best epoch's keys and score.
    """

    def __init__(self, n_items: int, embed_dim: int, n_cls: int, alpha: float, beta: float,
                 keep_best: bool = False) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.zeros(n_items, embed_dim))  # (N, E)
        self.register_buffer("values", torch.zeros(n_items, n_cls))  # (N, C)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if keep_best:
            self.register_buffer("best_keys", torch.zeros(n_items, embed_dim))
            self.register_buffer("best_correct", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def build(self, keys: Tensor, labels: Tensor) -> None:
        """Fill keys ``(N, E)`` and the one-hot values of ``labels`` ``(N,)``."""
        if keys.shape != self.keys.shape:
            raise ValueError(f"Tip-Adapter cache: {tuple(keys.shape)} keys for a cache of {tuple(self.keys.shape)}; "
                             "the training split changed since the model was built")
        self.keys.copy_(keys)
        self.values.copy_(one_hot_values(labels, self.values.shape[1]))

    @torch.no_grad()
    def set_alpha_beta(self, alpha: float, beta: float) -> None:
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)

    def forward(self, features: Tensor) -> Tensor:
        """``alpha exp(-beta (1 - f K^T)) L`` ``(B, C)`` for L2-normalised fp32 features ``(B, E)``."""
        return cache_logits(features, self.keys, self.values, self.beta) * self.alpha
