"""MaPLe: Multi-modal Prompt Learning — deep text prompts coupled to deep image prompts.

Khattak, Rasheed, Maaz, Khan, Khan, "MaPLe: Multi-modal Prompt Learning", CVPR 2023, arXiv:2210.03117.
Reference implementation: muzairkhattak/multimodal-prompt-learning@69bce21 (``trainers/maple.py``).

Learnable text prompts enter CLIP's text tower at layer 0 (the context ``ctx``, replacing the first ``N_CTX``
tokens of "a photo of a") and are replaced by fresh ones before layers ``1 .. J-1`` (``compound_prompts_text``).
The image tower gets no prompts of its own: its prompts at each layer ``k < J`` are a linear map of that layer's
text prompts, ``V_k = F_k(P_k) = P_k W_k^T + b_k`` (``proj`` for layer 0, ``compound_prompt_projections`` after),
which couples the two branches.  Only the prompts and the ``J`` projections are trained, with cross-entropy.
Differences from the reference and the switches restoring it: docs/methods/maple.md.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .model import DeepPromptCLIP
from .prompts import ClassPromptLearner, PromptSet, prompt_list, vision_width
from .trainer import DeepPromptTrainer

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.MAPLE = CN()
    # Prompt tokens per layer, in both towers (the reference's N_CTX)
    cfg.TRAINER.MAPLE.N_CTX = 2
    # Phrase whose first N_CTX tokens initialise the text context (the rest stays in the template);
    # "" or a phrase shorter than N_CTX tokens = random N(0, INIT_STD^2) context behind "X" placeholders
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    # fp16 (reference: CLIP in half precision), fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    cfg.TRAINER.MAPLE.PREC = "fp16"
    # Prompt depth J: text prompts at layers 0 .. J-1 of the text tower, their projections at the same image
    # layers; 1 = shallow MaPLe (layer 0 only); at most the number of layers (12 for ViT-B/16)
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9
    # Std of the random prompts: the deeper text prompts and a random context (the reference hard-codes 0.02)
    cfg.TRAINER.MAPLE.INIT_STD = 0.02
    # True keeps every prompt parameter in fp32 under PREC fp16 (cast where it meets CLIP); False is the
    # reference's recipe: ctx and the layer-0 projection are fp16 parameters updated in fp16, the rest fp32
    cfg.TRAINER.MAPLE.FP32_MASTER_WEIGHTS = True
    # True rounds the prompt tokens (all but the text context) to fp16 values before they enter a tower, as the
    # reference's hard-coded .half() does; only changes PREC fp32 runs (the reference's fp32 MaPLe cannot run:
    # its fp16 layer-0 projection meets an fp32 context)
    cfg.TRAINER.MAPLE.ROUND_PROMPTS_TO_FP16 = False


def couple(text_prompts: Tensor, projection: nn.Linear) -> Tensor:
    """MaPLe's V-L coupling function ``F_k``: image prompts ``(P, W) = text_prompts (P, D) @ W_k^T + b_k``."""
    return projection(text_prompts.to(projection.weight.dtype))


class MaPLePromptLearner(ClassPromptLearner):
    """Text prompts of layers ``0 .. J-1`` and the linear maps that turn them into the image prompts.

    Parameter names are the reference's (``ctx``, ``proj``, ``compound_prompts_text.{k}``,
    ``compound_prompt_projections.{k}``; entry ``k`` serves layer ``k+1``), so its checkpoints load unchanged.
    """

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, n_ctx: int, depth: int,
                 ctx_init: str = "a photo of a", init_std: float = 0.02) -> None:
        super().__init__(classnames, clip_model, n_ctx, ctx_init, init_std)
        width = vision_width(clip_model)
        self.proj = nn.Linear(self.ctx_dim, width)  # layer 0 (PyTorch's default Linear init, as the reference)
        self.compound_prompts_text = prompt_list(depth - 1, n_ctx, self.ctx_dim, init_std)
        # As the reference (deep copies of one layer), every deeper projection starts from the same weights.
        template = nn.Linear(self.ctx_dim, width)
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(template) for _ in range(depth - 1))
        logger.info(f"MaPLe prompts: {n_ctx} tokens x depth {depth}, coupled {self.ctx_dim} -> {width}")

    def forward(self) -> PromptSet:  # type: ignore[override]
        deep_visual = tuple(couple(prompts, projection) for prompts, projection
                            in zip(self.compound_prompts_text, self.compound_prompt_projections))
        return PromptSet(text=self.class_prompts(), deep_text=tuple(self.compound_prompts_text),
                         visual=couple(self.ctx, self.proj), deep_visual=deep_visual)


@TRAINER_REGISTRY.register()
class MaPLe(DeepPromptTrainer):
    """Multi-modal Prompt Learning (MaPLe).

    "MaPLe: Multi-modal Prompt Learning", https://arxiv.org/abs/2210.03117
    """

    REFERENCE_MODEL_NAME = "MultiModalPromptLearner"  # the reference's checkpoint folder in a run directory

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.MAPLE
        if node.N_CTX < 1 or node.PROMPT_DEPTH < 1:
            raise ValueError(f"TRAINER.MAPLE.N_CTX={node.N_CTX} / PROMPT_DEPTH={node.PROMPT_DEPTH}; both must be >= 1")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.MAPLE.INIT_STD={node.INIT_STD}; it must be > 0")
        self.check_vit_backbone(cfg, "MaPLe's image prompts")
        super().check_cfg(cfg)

    def reference_half_parameters(self) -> Sequence[str]:
        return () if self.cfg.TRAINER.MAPLE.FP32_MASTER_WEIGHTS else ("ctx", "proj.weight", "proj.bias")

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.MAPLE
        self.check_image_tower(clip_model, "MaPLe's image prompts")
        layers = min(clip_model.transformer.layers, clip_model.visual.transformer.layers)
        self.check_depth("TRAINER.MAPLE.PROMPT_DEPTH", node.PROMPT_DEPTH, layers, "shallower")
        learner = MaPLePromptLearner(classnames, clip_model, node.N_CTX, node.PROMPT_DEPTH, ctx_init=node.CTX_INIT,
                                     init_std=node.INIT_STD)
        return DeepPromptCLIP(learner, self.make_text_encoder(clip_model), clip_model,
                              round_prompts_to_fp16=node.ROUND_PROMPTS_TO_FP16)
