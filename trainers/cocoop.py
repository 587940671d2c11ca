"""CoCoOp: Conditional Context Optimization — CoOp's context shifted by a per-image bias from a small meta-net.

Zhou, Yang, Loy, Liu, "Conditional Prompt Learning for Vision-Language Models", CVPR 2022, arXiv:2203.05557.
Reference implementation: KaiyangZhou/CoOp@ff61507 ``trainers/cocoop.py``.

For an image with normalised features ``f`` the context is ``ctx + meta_net(f)`` (the same bias added to every
context vector), so every image has its own prompts for all classes; the logits are CLIP's scaled cosine
similarities between the image and its own class prompts.  ``ctx`` and the two-layer meta-net are trained with
cross-entropy; parameter names and the checkpoint layout (``ctx``, ``meta_net.linear1.*``,
``meta_net.linear2.*``) are CoCoOp's.  All ``B x n_cls`` prompts of a batch go through the text encoder in one
call (the reference loops over images).  Differences from the reference: docs/methods/cocoop.md.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.custom_clip import CustomCLIP, l2_normalize
from .common.prompt_learner import PromptLearnerBase
from .common.prompt_trainer import ClipPromptTrainer
from .common.text_encoder import TextEncoder

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.COCOOP = CN()
    # Number of context vectors M (ignored when CTX_INIT is set: its word count is used)
    cfg.TRAINER.COCOOP.N_CTX = 16
    # Words to initialise the context from, e.g. "a photo of a"; "" = random N(0, INIT_STD^2)
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    # fp16 (CoCoOp default: CLIP, ctx and meta-net in half precision), fp32 or amp; fp16/amp need CUDA
    cfg.TRAINER.COCOOP.PREC = "fp16"
    # Meta-net hidden width = vis_dim // META_NET_REDUCTION (CoCoOp hard-codes 16: 512 -> 32 -> 512 for ViT-B/16)
    cfg.TRAINER.COCOOP.META_NET_REDUCTION = 16
    # Standard deviation of the random context init (CoCoOp hard-codes 0.02)
    cfg.TRAINER.COCOOP.INIT_STD = 0.02
    # Most prompts (images x classes) per text-encoder call; bounds memory, 0 = the whole batch at once
    cfg.TRAINER.COCOOP.TEXT_CHUNK_SIZE = 16384
    # True keeps ctx and the meta-net in fp32 under PREC fp16, cast to fp16 where they meet CLIP; False is
    # CoCoOp's literal recipe: both are fp16 parameters updated by SGD in fp16, where small updates round away
    cfg.TRAINER.COCOOP.FP32_MASTER_WEIGHTS = True


class MetaNet(nn.Module):
    """``linear1 -> ReLU -> linear2``: image features ``(B, vis_dim)`` -> context bias ``(B, ctx_dim)``."""

    def __init__(self, vis_dim: int, ctx_dim: int, reduction: int) -> None:
        super().__init__()
        hidden = vis_dim // reduction
        if hidden < 1:
            raise ValueError(f"TRAINER.COCOOP.META_NET_REDUCTION={reduction} leaves no hidden unit for "
                             f"vis_dim={vis_dim}; use a reduction <= {vis_dim}")
        self.linear1 = nn.Linear(vis_dim, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(hidden, ctx_dim)

    def forward(self, image_features: Tensor) -> Tensor:
        return self.linear2(self.relu(self.linear1(image_features)))


class CoCoOpPromptLearner(PromptLearnerBase):
    """Generic context + meta-net; ``forward(image_features)`` -> prompts ``(B, n_cls, L, D)``."""

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, n_ctx: int, ctx_init: str = "",
                 meta_reduction: int = 16, init_std: float = 0.02) -> None:
        super().__init__(classnames, clip_model, n_ctx=n_ctx, ctx_init=ctx_init, csc=False,
                         class_token_position="end", init_std=init_std)
        self.meta_net = MetaNet(clip_model.visual.output_dim, self.ctx_dim, meta_reduction)

    def forward(self, image_features: Tensor, seq_len: Optional[int] = None) -> Tensor:
        """Prompts for every (image, class) pair; ``seq_len`` crops them (see ``construct_prompts``)."""
        bias = self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))  # (B, D), fp32 master weights
        ctx_shifted = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, n_ctx, D)
        ctx = ctx_shifted.unsqueeze(1).expand(-1, self.n_cls, -1, -1)  # (B, n_cls, n_ctx, D)
        return self.construct_prompts(ctx, seq_len)  # (B, n_cls, L, D)


class CoCoOpCLIP(CustomCLIP):
    """``images (B, 3, R, R) -> logits (B, n_cls)`` with image-conditioned prompts; never a loss."""

    per_image_text = True  # every image has its own class prompts

    def __init__(self, prompt_learner: CoCoOpPromptLearner, text_encoder: TextEncoder, clip_model: nn.Module,
                 text_chunk_size: int = 0) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.text_chunk_size = text_chunk_size

    def _logits(self, image_features: Tensor) -> Tensor:
        """Logits ``(b, n_cls)`` of normalised image features ``(b, E)``: one text-encoder call for b x n_cls."""
        learner = self.prompt_learner
        seq_len = learner.eot_seq_len if self.text_encoder.truncate_at_eot else None
        prompts = learner(image_features, seq_len)  # (b, n_cls, L, D)
        batch, n_cls, length, width = prompts.shape
        tokenized = learner.tokenized_prompts[:, :length].repeat(batch, 1)  # (b * n_cls, L), image-major
        text_features = self.text_encoder(prompts.reshape(batch * n_cls, length, width), tokenized)  # (b*n_cls, E)
        text_features = l2_normalize(text_features).view(batch, n_cls, -1)  # (b, n_cls, E)
        return self.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, text_features)  # (b, n_cls)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        """Logits ``(B, n_cls)`` of normalised features ``(B, E)``, chunked by ``text_chunk_size``."""
        n_cls = self.prompt_learner.n_cls
        per_chunk = max(1, self.text_chunk_size // n_cls) if self.text_chunk_size > 0 else image_features.shape[0]
        return torch.cat([self._logits(chunk) for chunk in image_features.split(per_chunk)])  # (B, n_cls)


@TRAINER_REGISTRY.register()
class CoCoOp(ClipPromptTrainer):
    """Conditional Context Optimization (CoCoOp).

    "Conditional Prompt Learning for Vision-Language Models", https://arxiv.org/abs/2203.05557
    """


    LEARNABLE = ("prompt_learner",)
    EVAL_FROM_IMAGE_FEATURES = True  # the meta-net reads image features; the image tower itself is frozen

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.COCOOP
        if not node.CTX_INIT and node.N_CTX < 1:
            raise ValueError(f"TRAINER.COCOOP.N_CTX={node.N_CTX}; use at least 1 context vector or set CTX_INIT")
        if node.META_NET_REDUCTION < 1:
            raise ValueError(f"TRAINER.COCOOP.META_NET_REDUCTION={node.META_NET_REDUCTION}; it must be >= 1")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.COCOOP.INIT_STD={node.INIT_STD}; it must be > 0")
        if node.TEXT_CHUNK_SIZE < 0:
            raise ValueError(f"TRAINER.COCOOP.TEXT_CHUNK_SIZE={node.TEXT_CHUNK_SIZE}; use 0 (no limit) or > 0")
        super().check_cfg(cfg)

    def fp32_master_weights(self) -> bool:
        return self.cfg.TRAINER.COCOOP.FP32_MASTER_WEIGHTS

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.COCOOP
        prompt_learner = CoCoOpPromptLearner(classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT,
                                             meta_reduction=node.META_NET_REDUCTION, init_std=node.INIT_STD)
        return CoCoOpCLIP(prompt_learner, self.make_text_encoder(clip_model), clip_model, node.TEXT_CHUNK_SIZE)
