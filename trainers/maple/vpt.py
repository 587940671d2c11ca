"""VPT (deep): learned prompt tokens in CLIP's image tower only, as the MaPLe paper's vision-prompting baseline.

Jia et al., "Visual Prompt Tuning", ECCV 2022, arXiv:2203.12119 (VPT-deep), applied to CLIP as in Khattak et al.,
"MaPLe: Multi-modal Prompt Learning", CVPR 2023, arXiv:2210.03117.  Reference implementation:
muzairkhattak/multimodal-prompt-learning@69bce21 (``trainers/vpt.py``).

``N_CTX_VISION`` learned tokens are appended after the patches at layer 0 and replaced by fresh ones before layers
``1 .. J-1`` of the image tower; the class text features come from CLIP's frozen text tower on the hand-written
prompt "a photo of a {class}.", computed once.  Only the image prompts are trained, with cross-entropy.
Differences from the reference: docs/methods/maple.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from ..common.text_features import class_text_features
from .model import DeepPromptCLIP
from .prompts import VisionPromptLearner
from .trainer import DeepPromptTrainer

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.VPT = CN()
    # Prompt tokens per image-tower layer
    cfg.TRAINER.VPT.N_CTX_VISION = 2
    # The fixed class prompts are "<CTX_INIT> {class}." (the reference always uses "a photo of a")
    cfg.TRAINER.VPT.CTX_INIT = "a photo of a"
    # fp16, fp32 or amp; fp16/amp need CUDA, else fp32 (warned).  The reference runs CLIP in fp32 whatever
    # this says (its loader ends with .float()): set fp32 for its numerics
    cfg.TRAINER.VPT.PREC = "fp16"
    # Image prompt depth J >= 1: prompts at image layers 0 .. J-1; 1 = shallow VPT
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1
    # Std of the random image prompts (the reference hard-codes 0.02)
    cfg.TRAINER.VPT.INIT_STD = 0.02
    # True rounds the image prompts to fp16 values before they enter the tower, as the reference's hard-coded
    # .half() does in its always-fp32 model; only changes PREC fp32 runs
    cfg.TRAINER.VPT.ROUND_PROMPTS_TO_FP16 = False


@TRAINER_REGISTRY.register()
class VPT(DeepPromptTrainer):
    """Deep Visual Prompt Tuning (VPT-deep) on CLIP's image tower.

    "Visual Prompt Tuning", https://arxiv.org/abs/2203.12119
    """

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.VPT
        if node.N_CTX_VISION < 1 or node.PROMPT_DEPTH_VISION < 1:
            raise ValueError(f"TRAINER.VPT.N_CTX_VISION={node.N_CTX_VISION} / PROMPT_DEPTH_VISION="
                             f"{node.PROMPT_DEPTH_VISION}; both must be >= 1")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.VPT.INIT_STD={node.INIT_STD}; it must be > 0")
        if "{}" in node.CTX_INIT:
            raise ValueError(f"TRAINER.VPT.CTX_INIT={node.CTX_INIT!r}; give the words before the class name, "
                             "without {}")
        self.check_vit_backbone(cfg, "VPT's image prompts")
        super().check_cfg(cfg)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.VPT
        self.check_image_tower(clip_model, "VPT's image prompts")
        self.check_depth("TRAINER.VPT.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION,
                         clip_model.visual.transformer.layers, "image")
        template = f"{node.CTX_INIT.replace('_', ' ').strip()} {{}}."
        logger.info(f'VPT class prompts (fixed): "{template}"')
        text_features = class_text_features(clip_model, classnames, [template],
                                            truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)  # (n_cls, E)
        learner = VisionPromptLearner(clip_model, node.N_CTX_VISION, node.PROMPT_DEPTH_VISION, init_std=node.INIT_STD)
        return DeepPromptCLIP(learner, self.make_text_encoder(clip_model), clip_model,
                              fixed_text_features=text_features, round_prompts_to_fp16=node.ROUND_PROMPTS_TO_FP16)
