"""Multi-label classification losses and LMPT's class-specific embedding loss, as pure functions / modules.

Notation: logits ``z`` ``(B, C)``, 0/1 targets ``y`` ``(B, C)``, training positives per class ``n_c``, ``N``
training images, ``sigma`` the logistic function, ``BCE(z, y) = -[y log sigma(z) + (1 - y) log(1 - sigma(z))]``
element-wise.  The losses and constants follow LMPT (Xia et al., arXiv:2305.04536, richard-peng-xia/LMPT@aab39ca
``lmpt/dbl.py``, ``lmpt/csel.py``, ``lmpt/train.py``) and the Distribution-Balanced loss (Wu et al.,
arXiv:2007.09654, wutong16/DistributionBalancedLoss@14460d0); docs/methods/lmpt.md has the formulas and the
reference's behaviour where it differs.

- ``bce_loss``: mean BCE.
- ``focal_loss``: Lin et al., "Focal Loss for Dense Object Detection", arXiv:1708.02002, eq. (5) per element.
- ``asymmetric_loss``: Ridnik et al., "Asymmetric Loss For Multi-Label Classification", arXiv:2009.14119,
  eq. (1)-(4) with probability shifting.
- ``DistributionBalancedLoss``: re-balanced weighting + negative-tolerant regularisation + focal factor.
- ``ClassSpecificEmbeddingLoss``: LMPT's caption/prompt embedding loss (hinge-embedding form by default).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")
DBL_FOCAL_MODES = ("batch", "element", "none")
# DB-loss constants for a dataset that declares none (the DB paper's COCO-MLT configuration): the negative-logit
# scale of NTR and the centre of the re-balancing map.  Datasets override them with DBL_NEG_SCALE / DBL_MAP_MU.
DBL_DEFAULT_NEG_SCALE = 2.0
DBL_DEFAULT_MAP_MU = 0.2
CSE_FORMS = ("hinge_embedding", "code_literal")
CSE_FREQS = ("counts", "softmax_counts")
CSE_DIST_REDUCES = ("sum", "mean")

ArrayLike = Union[Tensor, Sequence[float]]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction={reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def _as_float_tensor(values: ArrayLike) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).float()


def bce_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """``BCE(z, y)`` reduced over all ``B x C`` entries (``nn.BCEWithLogitsLoss``)."""
    return _reduce(F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none"), reduction)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = -1.0,
               reduction: str = "mean") -> Tensor:
    """Sigmoid focal loss ``alpha_t (1 - p_t)^gamma BCE(z, y)``, ``p_t = sigma(z)`` if ``y = 1`` else ``1 - sigma(z)``.

    ``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives; ``alpha < 0`` disables it (``alpha_t = 1``).
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C)
    prob = torch.sigmoid(logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = (1 - p_t) ** gamma * bce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def asymmetric_loss(logits: Tensor, targets: Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05, eps: float = 1e-8, detach_focal_weight: bool = True,
                    reduction: str = "mean") -> Tensor:
    """ASL: ``-[y (1 - p)^gamma_pos log p + (1 - y) p_m^gamma_neg log(1 - p_m)]``, ``p = sigma(z)``.

    Probability shifting ``p_m = max(p - clip, 0)`` (i.e. ``1 - p_m = min(1 - p + clip, 1)``); logs are taken of
    ``max(., eps)``.  LMPT builds it with ``gamma_neg = 4, gamma_pos = 0, clip = 0.05``, focusing weights without
    gradient, and reduces with a *mean* over ``B x C``; the ASL paper sums (``reduction="sum"``).
    """
    targets = targets.to(logits.dtype)
    prob = torch.sigmoid(logits)
    prob_neg = 1 - prob  # (B, C)
    if clip is not None and clip > 0:
        prob_neg = (prob_neg + clip).clamp(max=1)
    log_likelihood = targets * torch.log(prob.clamp(min=eps)) + (1 - targets) * torch.log(prob_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
            base = 1 - prob * targets - prob_neg * (1 - targets)  # 1 - p for positives, 1 - p_neg for negatives
            focal_weight = base ** (gamma_pos * targets + gamma_neg * (1 - targets))
        log_likelihood = log_likelihood * focal_weight
    return _reduce(-log_likelihood, reduction)


class DistributionBalancedLoss(nn.Module):
    """Distribution-Balanced loss (Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in
    Long-Tailed Datasets", ECCV 2020, https://arxiv.org/abs/2007.09654) as LMPT uses it.

    1. Re-balanced weights (``reweight``): ``R_b = sum_j y_bj / n_j``, ``r_bc = (1 / n_c) / R_b``,
       ``w_bc = map_alpha + sigma(map_beta (r_bc - map_mu))``; 1 when off.
    2. Negative-tolerant regularisation: ``nu_c = -init_bias log(N / n_c - 1) / neg_scale``, ``z' = z + nu``;
       negatives get ``z'' = neg_scale z'`` and ``w / neg_scale``, positives keep ``z'`` and ``w``
       (``neg_scale = 1, init_bias = 0`` turns it off).
    3. Focal factor, ``focal``:
       - ``"batch"`` (LMPT's code: its BCE helper always takes the mean): ``l = mean BCE(z'', y)``,
         ``L = balance_param (1 - exp(-l))^gamma mean[w BCE(z'', y)]``;
       - ``"element"`` (DB paper/repository): ``L = mean[balance_param (1 - p_t)^gamma w BCE(z'', y)]`` with
         ``p_t = exp(-BCE(z'', y))``;
       - ``"none"``: ``L = mean[w BCE(z'', y)]``.
    Everything is multiplied by ``loss_weight``.  With ``reweight=False``, ``neg_scale=1``, ``init_bias=0``,
    ``focal="none"`` and ``loss_weight=1`` it is exactly the mean BCE.  The reference adds ``nu`` to the model
    output in place; here the logits are not modified.

    Args:
        class_freq: ``n_c`` ``(C,)``, positives per class in the training set.
        num_train: ``N``, number of training images.
    """

    def __init__(self, class_freq: ArrayLike, num_train: int, focal: str = "batch", gamma: float = 2.0,
                 balance_param: float = 2.0, neg_scale: float = DBL_DEFAULT_NEG_SCALE, init_bias: float = 0.05,
                 map_alpha: float = 0.1, map_beta: float = 10.0, map_mu: float = DBL_DEFAULT_MAP_MU,
                 loss_weight: float = 1.0,
                 reweight: bool = True) -> None:
        super().__init__()
        if focal not in DBL_FOCAL_MODES:
            raise ValueError(f"DB loss focal={focal!r}; choose one of {', '.join(DBL_FOCAL_MODES)}")
        freq = _as_float_tensor(class_freq)
        if (freq <= 0).any() or (freq >= num_train).any():
            raise ValueError(f"DB loss needs 0 < n_c < N={num_train} for every class; got counts {freq.tolist()}")
        self.focal, self.gamma, self.balance_param = focal, gamma, balance_param
        self.neg_scale, self.loss_weight, self.reweight = neg_scale, loss_weight, reweight
        self.map_alpha, self.map_beta, self.map_mu = map_alpha, map_beta, map_mu
        self.register_buffer("freq_inv", 1.0 / freq, persistent=False)  # (C,)
        self.register_buffer("init_bias", -torch.log(num_train / freq - 1) * init_bias / neg_scale,
                             persistent=False)  # (C,)

    def rebalance_weight(self, targets: Tensor) -> Tensor:
        """``w_bc = map_alpha + sigma(map_beta ((1 / n_c) / R_b - map_mu))`` ``(B, C)`` (1 everywhere when off)."""
        if not self.reweight:
            return torch.ones_like(targets)
        repeat_rate = (targets * self.freq_inv).sum(dim=1, keepdim=True)  # (B, 1)
        ratio = self.freq_inv.unsqueeze(0) / repeat_rate  # (B, C)
        return self.map_alpha + torch.sigmoid(self.map_beta * (ratio - self.map_mu))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = targets.to(logits.dtype)
        weight = self.rebalance_weight(targets)  # (B, C)
        shifted = logits + self.init_bias  # (B, C)
        shifted = shifted * targets + self.neg_scale * shifted * (1 - targets)
        weight = weight * targets + weight / self.neg_scale * (1 - targets)
        bce = F.binary_cross_entropy_with_logits(shifted, targets, reduction="none")  # (B, C)
        if self.focal == "batch":
            focal = (1 - torch.exp(-bce.mean())) ** self.gamma
            loss = self.balance_param * focal * (weight * bce).mean()
        elif self.focal == "element":
            loss = (self.balance_param * (1 - torch.exp(-bce)) ** self.gamma * weight * bce).mean()
        else:
            loss = (weight * bce).mean()
        return self.loss_weight * loss


def cse_class_stats(class_freq: ArrayLike, margin: float, gamma: float, freq: str = "counts"
                    ) -> Tuple[Tensor, Tensor]:
    """Per-class soft margins ``Delta_c = margin q_c^(-1/4)`` and weights ``w_c = q_c^(-gamma) / sum_j q_j^(-gamma)``.

    ``freq="counts"``: ``q_c = n_c`` (the intended statistic).  ``"softmax_counts"``: ``q = softmax(n)`` as the
    released code does — it underflows to one-hot, so every class but the most frequent gets an infinite
    margin and a NaN weight (only for demonstrating the bug).
    """
    if freq not in CSE_FREQS:
        raise ValueError(f"CSE freq={freq!r}; choose one of {', '.join(CSE_FREQS)}")
    q = _as_float_tensor(class_freq)
    if freq == "softmax_counts":
        q = torch.softmax(q, dim=0)
    margins = margin * q.pow(-0.25)  # (C,)
    inv = q.pow(-gamma)
    return margins, inv / inv.sum()


def caption_prompt_distance(caption_emb: Tensor, prompts: Tensor, m_ctx: int, reduce: str = "sum") -> Tensor:
    """Cosine distance ``d_bc = sum_l (1 - cos(a_{b,l}, p_{c,l+m_ctx}))`` for ``l < L - m_ctx`` ``(B, C)``.

    Args:
        caption_emb: caption token embeddings ``(B, L, D)`` (CLIP's token-embedding layer, no positions).
        prompts: prompt-learner output ``(C, L, D)``; shifted left by ``m_ctx`` positions before comparing.
        m_ctx: the position offset (LMPT's ``--m_ctx``).
        reduce: ``sum`` over positions (LMPT) or ``mean``.
    """
    length = caption_emb.shape[1] - m_ctx
    a = F.normalize(caption_emb[:, :length].float(), dim=-1)  # (B, L - m, D)
    p = F.normalize(prompts[:, m_ctx:m_ctx + length].float(), dim=-1)  # (C, L - m, D)
    cos = torch.einsum("bld,cld->bcl", a, p)  # (B, C, L - m)
    dist = 1 - cos
    if reduce == "sum":
        return dist.sum(-1)
    if reduce == "mean":
        return dist.mean(-1)
    raise ValueError(f"CSE distance reduce={reduce!r}; choose one of {', '.join(CSE_DIST_REDUCES)}")


class ClassSpecificEmbeddingLoss(nn.Module):
    """LMPT's class-specific embedding loss (Xia et al., "LMPT: Prompt Tuning with Class-Specific Embedding Loss
    for Long-tailed Multi-Label Visual Recognition", https://arxiv.org/abs/2305.04536).

    ``d_bc`` from ``caption_prompt_distance``; margins ``Delta_c`` and weights ``w_c`` from ``cse_class_stats``.

    - ``form="hinge_embedding"`` (default, resolved): ``l_bc = w_c d_bc`` if ``y_bc = 1`` else
      ``w_c max(0, Delta_c - d_bc)`` — present classes are pulled towards the caption, absent ones pushed beyond
      their margin.
    - ``form="code_literal"``: ``l_bc = w_c max(0, Delta_c - (2 y_bc - 1) d_bc)`` as released (inactive for
      positives, pulls every absent class towards the caption: the sign is the opposite of the stated intent).

    ``L = mean_{b,c} l_bc``.  Captions are constants; everything is computed in fp32.
    """

    def __init__(self, class_freq: ArrayLike, margin: float = 0.2, gamma: float = 2.0, m_ctx: int = 2,
                 form: str = "hinge_embedding", freq: str = "counts", dist_reduce: str = "sum") -> None:
        super().__init__()
        if form not in CSE_FORMS:
            raise ValueError(f"CSE form={form!r}; choose one of {', '.join(CSE_FORMS)}")
        if dist_reduce not in CSE_DIST_REDUCES:
            raise ValueError(f"CSE dist_reduce={dist_reduce!r}; choose one of {', '.join(CSE_DIST_REDUCES)}")
        self.form, self.m_ctx, self.dist_reduce = form, m_ctx, dist_reduce
        margins, weights = cse_class_stats(class_freq, margin, gamma, freq)
        self.register_buffer("margins", margins, persistent=False)  # (C,)
        self.register_buffer("class_weights", weights, persistent=False)  # (C,)

    def entries(self, caption_emb: Tensor, prompts: Tensor, targets: Tensor) -> Tensor:
        """The weighted terms ``l_bc`` ``(B, C)`` whose mean is the loss (one row per image)."""
        dist = caption_prompt_distance(caption_emb, prompts, self.m_ctx, self.dist_reduce)  # (B, C)
        targets = targets.float()
        if self.form == "hinge_embedding":
            per_entry = targets * dist + (1 - targets) * torch.relu(self.margins - dist)
        else:
            per_entry = torch.relu(self.margins - (2 * targets - 1) * dist)
        return self.class_weights * per_entry

    def forward(self, caption_emb: Tensor, prompts: Tensor, targets: Tensor) -> Tensor:
        """Loss of captions ``(B, L, D)`` vs class prompts ``(C, L, D)`` with 0/1 targets ``(B, C)``."""
        return self.entries(caption_emb, prompts, targets).mean()
