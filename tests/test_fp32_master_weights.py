"""fp32 master weights under the fp16 recipe (``trainers/common/clip_loading.py:cast_learnable``).

The frozen CLIP is cast to fp16 on the CPU with ``cast_clip(model, "fp16")`` (the trainer only does this on
CUDA); a CoOp ``PromptCLIP`` and a CoCoOp ``CoCoOpCLIP`` built on it keep their learnable parameters in fp32,
receive fp32 gradients, survive one SGD step in fp32 (an update far below fp16's resolution is not rounded
away), and give the fp32 model's logits within fp16 tolerance.  ``fp32_master=False`` is the reference's half
weights.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_clip_fp32
from vlprompt.trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from vlprompt.trainers.common.clip_loading import cast_clip, cast_learnable
from vlprompt.trainers.common.prompt_clip import PromptCLIP
from vlprompt.trainers.common.prompt_learner import PromptLearnerBase
from vlprompt.trainers.common.text_encoder import TextEncoder

CLASSNAMES = ["circle", "red square", "big_blue triangle"]
TINY_STEP = 1e-6  # lr * grad of the SGD step: below half of fp16's spacing (>= 3.8e-6) for |ctx| >= 2^-8


def _coop(precision: str, fp32_master: bool = True) -> PromptCLIP:
    clip_model = cast_clip(copy.deepcopy(tiny_clip_fp32()), precision)
    torch.manual_seed(0)
    learner = PromptLearnerBase(CLASSNAMES, clip_model, n_ctx=4)
    model = PromptCLIP(learner, TextEncoder(clip_model), clip_model)
    cast_learnable(learner, clip_model, fp32_master=fp32_master)
    return model


def _cocoop(precision: str) -> CoCoOpCLIP:
    clip_model = cast_clip(copy.deepcopy(tiny_clip_fp32()), precision)
    torch.manual_seed(0)
    learner = CoCoOpPromptLearner(CLASSNAMES, clip_model, n_ctx=4, meta_reduction=4)
    model = CoCoOpCLIP(learner, TextEncoder(clip_model), clip_model)
    cast_learnable(learner, clip_model)
    return model


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _copy_learnable(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Same fp32 learnable values in both models (the fp16 init rounds differently)."""
    dst.prompt_learner.load_state_dict(src.prompt_learner.state_dict())


def test_coop_ctx_stays_fp32_under_fp16_and_logits_match_fp32():
    """ctx is fp32, the frozen buffers fp16; the fp16 logits equal the fp32 model's within fp16 tolerance."""
    m16, m32 = _coop("fp16"), _coop("fp32")
    _copy_learnable(m32, m16)
    assert m16.prompt_learner.ctx.dtype == torch.float32
    assert m16.prompt_learner.token_prefix.dtype == torch.float16  # frozen buffers stay in the compute dtype
    assert m16.image_encoder.conv1.weight.dtype == torch.float16
    with torch.no_grad():
        l16, l32 = m16(_images()), m32(_images())
    assert l16.dtype == torch.float16
    diff = (l16.float() - l32).abs().max().item()
    assert diff < 0.05, f"fp16 vs fp32 logits differ by {diff} (scale {l32.abs().max().item():.2f})"


def test_coop_sgd_step_updates_fp32_master_weights():
    """The gradient is fp32 and a step smaller than fp16's resolution still changes ctx (it would round away)."""
    model = _coop("fp16")
    ctx = model.prompt_learner.ctx
    before = ctx.detach().clone()
    optim = torch.optim.SGD([ctx], lr=1.0)
    loss = F.cross_entropy(model(_images()).float(), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert ctx.grad is not None and ctx.grad.dtype == torch.float32
    assert ctx.grad.abs().max() > 0
    ctx.grad.copy_(torch.full_like(ctx.grad, TINY_STEP))
    optim.step()
    assert ctx.dtype == torch.float32
    torch.testing.assert_close(before - ctx.detach(), torch.full_like(before, TINY_STEP), rtol=1e-2, atol=1e-9)
    # the same step on half weights (the reference) is lost to rounding wherever |ctx| >= 2^-8 (half-ulp > step)
    half = before.half()[before.abs() >= 2 ** -8]
    assert half.numel() > before.numel() // 2
    assert torch.equal(half - torch.full_like(half, TINY_STEP), half)


def test_fp32_master_false_is_the_reference_half_weights():
    """``fp32_master=False`` casts the learnable module to CLIP's dtype, as CoOp does."""
    model = _coop("fp16", fp32_master=False)
    assert model.prompt_learner.ctx.dtype == torch.float16


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cocoop_meta_net_stays_fp32_and_gets_fp32_grads(precision):
    """CoCoOp's meta-net reads fp16 image features through fp32 weights; its grads are fp32."""
    model = _cocoop(precision)
    learner = model.prompt_learner
    assert {p.dtype for p in learner.parameters()} == {torch.float32}
    logits = model(_images())
    F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0])).backward()
    for name, param in learner.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32, name
        assert param.grad.abs().max() > 0, name


def test_cocoop_fp16_logits_match_fp32():
    """fp16 CoCoOp with fp32 master weights gives the fp32 model's logits within fp16 tolerance."""
    m16, m32 = _cocoop("fp16"), _cocoop("fp32")
    _copy_learnable(m32, m16)
    with torch.no_grad():
        diff = (m16(_images()).float() - m32(_images())).abs().max().item()
    assert diff < 0.05, f"fp16 vs fp32 CoCoOp logits differ by {diff}"
