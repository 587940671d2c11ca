"""Multi-label losses (``trainers/lmpt/losses.py``) against their formulas, recomputed here element by
element on small hand-made batches (``shared/specs/lmpt.md`` §3): BCE, focal, ASL, the Distribution-Balanced loss
(both focal variants, per-dataset constants, all switches off = BCE) and LMPT's class-specific embedding loss
(the repository's explicit B x C x L x D expansion kept here as the reference; direction of its gradient).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlprompt.trainers.lmpt.losses import (
    ClassSpecificEmbeddingLoss,
    DistributionBalancedLoss,
    asymmetric_loss,
    bce_loss,
    caption_prompt_distance,
    cse_class_stats,
    focal_loss,
)

LOGITS = [[2.0, -1.0, 0.5, -3.0], [-0.5, 1.5, -2.0, 0.2], [0.0, -0.7, 3.0, 1.0]]
LABELS = [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 1]]
FREQ = [30, 12, 5, 2]  # n_c of the hand-made batch's "training set"
N_TRAIN = 40
COCO_FREQ = [1128, 37, 276, 32, 9, 41, 18, 87, 20, 50, 11, 13, 8, 97, 19, 49, 70, 17, 7, 10, 8, 6, 7, 7, 100, 39,
             189, 31, 24, 11, 12, 8, 35, 10, 25, 21, 17, 10, 20, 460, 84, 498, 126, 207, 173, 366, 39, 35, 44, 36,
             29, 25, 14, 45, 16, 73, 585, 153, 164, 44, 624, 25, 200, 137, 70, 89, 73, 127, 91, 175, 9, 237, 119,
             292, 87, 113, 15, 21, 6, 11]  # spec §1.2


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(z: float, y: float) -> float:
    return -(y * math.log(_sig(z)) + (1 - y) * math.log(1 - _sig(z)))


def _tensors():
    return torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS, dtype=torch.float64)


def _entries():
    return [(b, c, LOGITS[b][c], LABELS[b][c]) for b in range(3) for c in range(4)]


def test_bce():
    z, y = _tensors()
    assert bce_loss(z, y).item() == pytest.approx(np.mean([_bce(v, t) for _, _, v, t in _entries()]), rel=1e-12)


@pytest.mark.parametrize("alpha", [-1.0, 0.25])
def test_focal(alpha):
    z, y = _tensors()
    expected = []
    for _, _, v, t in _entries():
        p_t = _sig(v) if t else 1 - _sig(v)
        a_t = 1.0 if alpha < 0 else (alpha if t else 1 - alpha)
        expected.append(a_t * (1 - p_t) ** 2 * _bce(v, t))
    assert focal_loss(z, y, gamma=2.0, alpha=alpha).item() == pytest.approx(np.mean(expected), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_asymmetric_loss(reduction):
    z, y = _tensors()
    expected = []
    for _, _, v, t in _entries():
        p = _sig(v)
        if t:
            expected.append(-(1 - p) ** 0 * math.log(max(p, 1e-8)))
        else:
            p_m = max(p - 0.05, 0.0)
            expected.append(-(p_m ** 4) * math.log(max(1 - p_m, 1e-8)))
    value = asymmetric_loss(z, y, gamma_neg=4, gamma_pos=0, clip=0.05, reduction=reduction).item()
    assert value == pytest.approx(np.mean(expected) if reduction == "mean" else np.sum(expected), rel=1e-12)


def test_asymmetric_focusing_weight_has_no_gradient():
    """LMPT builds ASL with disable_torch_grad_focal_loss=True: d/dz of -(p_m^4) log(1 - p_m) with p_m^4 constant."""
    z = torch.tensor([[0.8]], dtype=torch.float64, requires_grad=True)
    asymmetric_loss(z, torch.zeros(1, 1), gamma_neg=4, clip=0.05).backward()
    p = _sig(0.8)
    p_m = p - 0.05
    # -(p_m^4) * d/dz log(1 - p_m) = p_m^4 * p (1 - p) / (1 - p_m)
    assert z.grad.item() == pytest.approx(p_m ** 4 * p * (1 - p) / (1 - p_m), rel=1e-10)


def _dbl_reference(neg_scale, init_bias, alpha, beta, mu, gamma, s, focal):
    """Spec §3.1, steps 1-4, one entry at a time."""
    losses, plain = [], []
    for b, c, v, t in _entries():
        repeat = sum(LABELS[b][j] / FREQ[j] for j in range(4))
        w = alpha + _sig(beta * ((1 / FREQ[c]) / repeat - mu))
        nu = -init_bias * math.log(N_TRAIN / FREQ[c] - 1) / neg_scale
        zz = v + nu
        if not t:
            zz, w = neg_scale * zz, w / neg_scale
        bce = _bce(zz, t)
        plain.append(bce)
        losses.append((w, bce))
    if focal == "batch":
        mean_bce = np.mean(plain)
        return s * (1 - math.exp(-mean_bce)) ** gamma * np.mean([w * l for w, l in losses])
    return np.mean([s * (1 - math.exp(-l)) ** gamma * w * l for w, l in losses])


@pytest.mark.parametrize("focal", ["batch", "element"])
@pytest.mark.parametrize("neg_scale,mu", [(2.0, 0.2), (5.0, 0.3)])  # COCO-LT, VOC-LT (spec §3.1)
def test_distribution_balanced_loss(focal, neg_scale, mu):
    z, y = _tensors()
    loss = DistributionBalancedLoss(FREQ, N_TRAIN, focal=focal, gamma=2.0, balance_param=2.0, neg_scale=neg_scale,
                                    init_bias=0.05, map_alpha=0.1, map_beta=10.0, map_mu=mu)
    expected = _dbl_reference(neg_scale, 0.05, 0.1, 10.0, mu, 2.0, 2.0, focal)
    assert loss(z, y).item() == pytest.approx(expected, rel=1e-6)  # class statistics are fp32 buffers
    assert torch.equal(z, _tensors()[0])  # the logits are not modified in place (the reference's are)


def test_distribution_balanced_loss_all_off_is_bce():
    z, y = _tensors()
    loss = DistributionBalancedLoss(FREQ, N_TRAIN, focal="none", neg_scale=1.0, init_bias=0.0, reweight=False)
    assert torch.equal(loss(z, y), F.binary_cross_entropy_with_logits(z, y))
    assert loss(z, y).item() == pytest.approx(bce_loss(z, y).item(), rel=1e-15)


def test_distribution_balanced_constants_on_coco_lt():
    """NTR bias range and rebalanced weights in [alpha, alpha + 1] (spec §3.1, COCO-LT counts, N = 1909)."""
    loss = DistributionBalancedLoss(COCO_FREQ, 1909, neg_scale=2.0, init_bias=0.05, map_mu=0.2)
    assert loss.init_bias.min().item() == pytest.approx(-0.144, abs=1e-3)
    assert loss.init_bias.max().item() == pytest.approx(0.009, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(64, 80, generator=g) < 0.06).float()
    targets[torch.arange(64), torch.randint(0, 80, (64,), generator=g)] = 1
    w = loss.rebalance_weight(targets)
    assert w.min() >= 0.1 and w.max() <= 1.1
    with pytest.raises(ValueError, match="0 < n_c < N"):
        DistributionBalancedLoss([3, 0, 2], 10)


def _cse_reference_expansion(captions, prompts, labels, freq, m_ctx, margin, gamma, form):
    """The repository's computation (explicit (B, C, L, D) expansion + cosine_similarity), resolved weights."""
    b, c = labels.shape
    length = captions.shape[1] - m_ctx
    a = captions[:, :length].unsqueeze(1).expand(b, c, length, -1)
    p = prompts[:, m_ctx:].unsqueeze(0).expand(b, c, length, -1)
    dist = (1 - torch.cosine_similarity(a, p, dim=-1)).sum(-1)  # (B, C)
    n = torch.tensor(freq, dtype=torch.float64)
    margins = margin / torch.sqrt(torch.sqrt(n))
    weights = (1 / n) ** gamma / ((1 / n) ** gamma).sum()
    if form == "code_literal":
        per = torch.relu(margins - (2 * labels - 1) * dist)
    else:
        per = torch.where(labels > 0, dist, torch.relu(margins - dist))
    return (weights * per).mean()


def _cse_inputs(seed=0, length=12, dim=8):
    g = torch.Generator().manual_seed(seed)
    captions = torch.randn(3, length, dim, generator=g, dtype=torch.float64)
    prompts = torch.randn(4, length, dim, generator=g, dtype=torch.float64)
    return captions, prompts, torch.tensor(LABELS, dtype=torch.float64)


@pytest.mark.parametrize("form", ["hinge_embedding", "code_literal"])
@pytest.mark.parametrize("m_ctx", [0, 2])
def test_cse_equals_reference_expansion(form, m_ctx):
    captions, prompts, labels = _cse_inputs()
    loss = ClassSpecificEmbeddingLoss(FREQ, margin=0.2, gamma=2.0, m_ctx=m_ctx, form=form)
    expected = _cse_reference_expansion(captions, prompts, labels, FREQ, m_ctx, 0.2, 2.0, form)
    assert loss(captions, prompts, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cse_distance_shift_and_mean_reduce():
    """d_bc compares caption position l with prompt position l + m_ctx; "mean" divides by L - m_ctx."""
    captions, prompts, _ = _cse_inputs(length=6, dim=4)
    d = caption_prompt_distance(captions, prompts, m_ctx=2)
    b, c = 1, 3
    manual = sum(1 - F.cosine_similarity(captions[b, l], prompts[c, l + 2], dim=0).item() for l in range(4))
    assert d[b, c].item() == pytest.approx(manual, rel=1e-6)
    assert caption_prompt_distance(captions, prompts, 2, "mean")[b, c].item() == pytest.approx(manual / 4, rel=1e-6)


def test_cse_class_stats():
    """Margins 0.2 n^(-1/4) and weights n^(-2) / sum: tail classes get larger margins and weights, weights sum
    to 1; the released softmax-of-counts is one-hot, so the literal margins are infinite and weights NaN."""
    margins, weights = cse_class_stats(FREQ, margin=0.2, gamma=2.0)
    assert margins.tolist() == pytest.approx([0.2 * n ** -0.25 for n in FREQ], rel=1e-6)
    assert weights.tolist() == pytest.approx([n ** -2 / sum(m ** -2 for m in FREQ) for n in FREQ], rel=1e-6)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert all(np.diff(margins.numpy()) > 0) and all(np.diff(weights.numpy()) > 0)  # FREQ is decreasing
    q = torch.softmax(torch.tensor(COCO_FREQ, dtype=torch.float32), 0)
    assert q[0] == 1.0 and (q[1:] == 0).all()
    lit_margins, lit_weights = cse_class_stats(COCO_FREQ, 0.2, 2.0, freq="softmax_counts")
    assert torch.isinf(lit_margins[1:]).all() and torch.isnan(lit_weights[1:]).all()


def _moved(prompts, cls, captions_row, m_ctx, t):
    """prompts with class ``cls`` moved a fraction t of the way to the (shifted) caption embedding."""
    out = prompts.clone()
    length = captions_row.shape[0] - m_ctx
    out[cls, m_ctx:] = (1 - t) * prompts[cls, m_ctx:] + t * captions_row[:length]
    return out


def test_cse_pulls_present_classes_and_pushes_absent_ones():
    """One image with classes {0, 2} present: moving class 0's prompt towards the caption lowers the loss; moving
    absent class 1 towards it (inside its margin) raises it.  The released sign does the opposite for class 1."""
    captions, prompts, _ = _cse_inputs()
    captions, labels = captions[:1], torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    m_ctx = 2
    loss = ClassSpecificEmbeddingLoss(FREQ, margin=0.2, gamma=2.0, m_ctx=m_ctx, dist_reduce="mean")
    values = [loss(captions, _moved(prompts, 0, captions[0], m_ctx, t), labels).item() for t in (0.0, 0.5, 0.9)]
    assert values[0] > values[1] > values[2]
    # absent class 1: far (t=0) its term is 0; within the margin (t close to 1) it costs w_1 (margin_1 - d)
    far = loss(captions, prompts, labels).item()
    near = loss(captions, _moved(prompts, 1, captions[0], m_ctx, 0.999), labels).item()
    nearer = loss(captions, _moved(prompts, 1, captions[0], m_ctx, 1.0), labels).item()
    assert far < near < nearer
    literal = ClassSpecificEmbeddingLoss(FREQ, margin=0.2, gamma=2.0, m_ctx=m_ctx, dist_reduce="mean",
                                         form="code_literal")
    assert literal(captions, _moved(prompts, 1, captions[0], m_ctx, 0.9), labels).item() < \
        literal(captions, prompts, labels).item()  # released sign: absent classes are pulled in
    # a gradient step on the prompts moves present classes towards the caption
    p = prompts.clone().requires_grad_(True)
    loss(captions, p, labels).backward()
    d_before = caption_prompt_distance(captions, prompts, m_ctx)[0]
    d_after = caption_prompt_distance(captions, (prompts - 10.0 * p.grad), m_ctx)[0]
    assert d_after[0] < d_before[0] and d_after[2] < d_before[2]
    assert torch.equal(p.grad[1], torch.zeros_like(p.grad[1])) and torch.equal(p.grad[3], torch.zeros_like(p.grad[3]))
