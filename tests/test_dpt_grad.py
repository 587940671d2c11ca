"""DPT's straight-through estimator: forward = E[ids] exactly, backward dL/dS = dL/dctx @ E^T.

Checked against the value computed in the test from dL/dctx (obtained by autograd on a detached copy of ctx)
and against the reference's literal path (dense one-hot @ E with a pass-through backward).
"""
from __future__ import annotations

import torch
from torch import nn

from vlprompt import clip
from vlprompt.trainers.dpt.discrete_prompt import DiscretePrompt, straight_through_embedding

V = clip.get_tokenizer().vocab_size


def _embedding(width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(V, width, generator=torch.Generator().manual_seed(seed)) * 0.02


def _loss(ctx: torch.Tensor) -> torch.Tensor:
    """A non-linear scalar of the context (tanh MLP), fixed weights."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(ctx.shape[1], 8, generator=g), torch.randn(8, generator=g)
    return (torch.tanh(ctx.float() @ w1) @ w2).pow(2).sum()


def test_gradient_is_dl_dctx_times_embedding_transpose():
    torch.manual_seed(0)
    prompt = DiscretePrompt(n_ctx=3, vocab_size=V, init_std=0.004)
    weight = _embedding()
    ctx, ids = prompt(weight)
    assert torch.equal(ctx, weight[ids])  # the forward is the plain embedding lookup
    _loss(ctx).backward()
    leaf = weight[ids].clone().requires_grad_(True)
    _loss(leaf).backward()
    expected = leaf.grad @ weight.t()  # (3, V): dL/dctx . E^T, dense over the vocabulary
    assert torch.allclose(prompt.scores.grad, expected, atol=1e-7, rtol=1e-6), \
        (prompt.scores.grad - expected).abs().max()
    assert (prompt.scores.grad != 0).float().mean() > 0.99  # every vocabulary entry moves


def test_gather_path_equals_dense_one_hot_path():
    """Values and gradients of the gather implementation equal the reference's one-hot matmul."""
    weight = _embedding(24, seed=3)
    ids = torch.tensor([5, 49000, 320, 7])
    grads = []
    outputs = []
    for dense in (False, True):
        scores = (torch.randn(4, V, generator=torch.Generator().manual_seed(4)) * 0.01).requires_grad_(True)
        ctx = straight_through_embedding(scores, weight, ids, dense_onehot=dense)
        (ctx * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
        outputs.append(ctx.detach())
        grads.append(scores.grad)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-6)


def test_embedding_gradient_when_not_frozen():
    """If E requires grad, it gets one-hot^T @ dL/dctx (what the dense path's autograd gives)."""
    ids = torch.tensor([3, 3, 100])  # a repeated id accumulates
    upstream = torch.randn(3, 8, generator=torch.Generator().manual_seed(6))
    grads = []
    for dense in (False, True):
        weight = _embedding(8, seed=7).requires_grad_(True)
        scores = torch.zeros(3, V, requires_grad=True)
        (straight_through_embedding(scores, weight, ids, dense_onehot=dense) * upstream).sum().backward()
        grads.append(weight.grad)
    assert torch.allclose(grads[0], grads[1])
    assert torch.allclose(grads[0][3], upstream[0] + upstream[1])


def test_fp32_scores_survive_half_casts():
    """keep_fp32: .half() moves nothing into fp16 and keeps the exact values; keep_fp32=False is the
    reference's fp16 score matrix, and its gradient is fp16 too."""
    torch.manual_seed(1)
    kept = DiscretePrompt(2, V, init_std=0.004)
    before = kept.scores.detach().clone()
    module = nn.ModuleDict({"prompt": kept, "proj": nn.Linear(4, 4)}).half()
    assert kept.scores.dtype == torch.float32 and torch.equal(kept.scores.detach(), before)
    assert module["proj"].weight.dtype == torch.float16
    literal = DiscretePrompt(2, V, init_std=0.004, keep_fp32=False).half()
    assert literal.scores.dtype == torch.float16
    ctx, ids = literal(_embedding(8).half())
    assert ctx.dtype == torch.float16
    ctx.float().sum().backward()
    assert literal.scores.grad.dtype == torch.float16


def test_spike_init_selects_the_spike_tokens():
    """Spike init at the ids of "a photo" selects exactly those tokens."""
    spike = clip.encode("a photo")
    prompt = DiscretePrompt(2, V, init_ids=spike, init_value=0.001)
    assert prompt.select().ids.tolist() == spike
    assert prompt.decode() == "a photo "
