"""Tiny seeded random CLIP models in OpenAI key layout, for offline tests and CPU experiments.

Same architecture family as Radford et al. 2021 (arXiv:2103.00020), scaled down.  Context length 77 and
vocabulary 49408 are kept so the real BPE tokenizer works; widths are multiples of 64 because
``build_model`` infers head counts as width // 64, as openai/CLIP does (head counts are not stored).

Weights are random but every tensor is informative, so that a wrong wiring changes the outputs:
LayerNorm/BatchNorm scales near 1, non-zero BatchNorm statistics, no zeroed ``bn3``.  They are pre-rounded to
fp16 so that the fp16 recipe of ``build_model`` is lossless, and ``logit_scale`` is ln(100) as in the released checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .model import CLIP

# Constructor arguments of clip.model.CLIP for each tiny architecture.
TINY_CONFIGS: dict[str, dict] = {
    "vit": dict(
        embed_dim=64,
        image_resolution=32,
        vision_layers=2,  # int -> VisionTransformer
        vision_width=128,  # 2 heads of width 64
        vision_patch_size=8,  # 4x4 grid, 17 tokens
        context_length=77,
        vocab_size=49408,
        transformer_width=128,
        transformer_heads=2,
        transformer_layers=2,
    ),
    "rn": dict(
        embed_dim=64,
        image_resolution=64,  # attention-pool grid 2x2
        vision_layers=(1, 2, 1, 1),  # two blocks in layer2 so a block without downsample is exercised
        vision_width=16,  # attention-pool width 512, 8 heads
        vision_patch_size=None,
        context_length=77,
        vocab_size=49408,
        transformer_width=128,
        transformer_heads=2,
        transformer_layers=2,
    ),
}
LOGIT_SCALE = math.log(100.0)  # released CLIP checkpoints store ln(100): exp(logit_scale) = 100


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> Tensor:
    """A random float tensor for state-dict entry ``name`` with a sensible scale for its role."""
    randn = torch.randn(shape, generator=generator)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)  # U(0.5, 1.5)
    if name.endswith("running_mean"):
        return 0.1 * randn
    if len(shape) == 1 and name.endswith(".weight"):  # LayerNorm / BatchNorm scale
        return 1.0 + 0.1 * randn
    if len(shape) == 1 and name.endswith("bias"):
        return 0.1 * randn
    if name == "token_embedding.weight":
        return 0.02 * randn
    if name == "positional_embedding":
        return 0.01 * randn
    if name in ("visual.class_embedding", "visual.positional_embedding", "visual.attnpool.positional_embedding"):
        return shape[-1] ** -0.5 * randn
    if name in ("visual.proj", "text_projection"):
        return shape[0] ** -0.5 * randn
    fan_in = math.prod(shape[1:])  # linear (out, in) or conv (out, in, k, k)
    return fan_in ** -0.5 * randn


def tiny_state_dict(arch: str, seed: int = 0) -> dict[str, Tensor]:
    """Seeded random state dict of the tiny ``arch`` ("vit" or "rn") in OpenAI key layout, fp32 values on fp16 grid."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"tiny_state_dict: unknown arch {arch!r}; choose one of {sorted(TINY_CONFIGS)}")
    with torch.device("meta"):
        template = CLIP(**TINY_CONFIGS[arch]).state_dict()  # shapes and dtypes only, no allocation
    generator = torch.Generator().manual_seed(seed)
    state_dict: dict[str, Tensor] = {}
    for name, meta in template.items():
        if not meta.is_floating_point():
            state_dict[name] = torch.zeros(meta.shape, dtype=meta.dtype)  # BatchNorm num_batches_tracked
        elif name == "logit_scale":
            state_dict[name] = torch.tensor(LOGIT_SCALE)
        else:
            state_dict[name] = _random_tensor(name, meta.shape, generator).half().float()
    return state_dict
