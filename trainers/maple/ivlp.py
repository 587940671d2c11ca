"""IVLP: independent deep vision-language prompts, the MaPLe paper's uncoupled baseline.

Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023, arXiv:2210.03117 (section 4, "independent V-L
prompting").  Reference implementation: muzairkhattak/multimodal-prompt-learning@69bce21
(``trainers/independentVL.py``, its ``IVLP`` trainer).

The text tower gets a context ``ctx`` at layer 0 (the first ``N_CTX_TEXT`` tokens of "a photo of a") and fresh
learned tokens before layers ``1 .. J_t-1``; the image tower gets its own learned tokens, appended after the
patches at layer 0 and replaced before layers ``1 .. J_v-1``.  Nothing links the two (MaPLe couples them).  With
``N_CTX_VISION 0`` and ``PROMPT_DEPTH_VISION 0`` it is deep language prompting alone.  Only the prompts are trained,
with cross-entropy.  Differences from the reference: docs/methods/maple.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .model import DeepPromptCLIP
from .prompts import IVLPPromptLearner
from .trainer import DeepPromptTrainer

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.IVLP = CN()
    # Prompt tokens per image-tower layer; 0 (with PROMPT_DEPTH_VISION 0) = no image prompts
    cfg.TRAINER.IVLP.N_CTX_VISION = 2
    # Prompt tokens per text-tower layer
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2
    # Phrase whose first N_CTX_TEXT tokens initialise the text context (the rest stays in the template);
    # "" or a phrase shorter than N_CTX_TEXT tokens = random N(0, INIT_STD^2) context behind "X" placeholders
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"
    # fp16 (reference: CLIP in half precision), fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    cfg.TRAINER.IVLP.PREC = "fp16"
    # Image prompt depth J_v: prompts at image layers 0 .. J_v-1; 0 = no image prompts (with N_CTX_VISION 0)
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9
    # Text prompt depth J_t >= 1: prompts at text layers 0 .. J_t-1; 1 = the context only (CoOp-like)
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9
    # Std of the random prompts: every deep prompt, the image prompts and a random context (reference: 0.02)
    cfg.TRAINER.IVLP.INIT_STD = 0.02
    # True keeps every prompt in fp32 under PREC fp16 (cast where it meets CLIP); False is the reference's
    # recipe: the text context is an fp16 parameter updated in fp16, the other prompts fp32
    cfg.TRAINER.IVLP.FP32_MASTER_WEIGHTS = True
    # True rounds the prompt tokens (all but the text context) to fp16 values before they enter a tower, as the
    # reference's hard-coded .half() does; only changes PREC fp32 runs
    cfg.TRAINER.IVLP.ROUND_PROMPTS_TO_FP16 = False


@TRAINER_REGISTRY.register()
class IVLP(DeepPromptTrainer):
    """Independent Vision-Language Prompting (IVLP), MaPLe's baseline.

    "MaPLe: Multi-modal Prompt Learning", https://arxiv.org/abs/2210.03117
    """

    REFERENCE_MODEL_NAME = "VLPromptLearner"  # the reference's checkpoint folder in a run directory

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.IVLP
        if node.N_CTX_TEXT < 1 or node.PROMPT_DEPTH_TEXT < 1:
            raise ValueError(f"TRAINER.IVLP.N_CTX_TEXT={node.N_CTX_TEXT} / PROMPT_DEPTH_TEXT={node.PROMPT_DEPTH_TEXT}; "
                             "both must be >= 1 (use --trainer VPT for image prompts alone)")
        if (node.N_CTX_VISION == 0) != (node.PROMPT_DEPTH_VISION == 0) or min(node.N_CTX_VISION,
                                                                                node.PROMPT_DEPTH_VISION) < 0:
            raise ValueError(f"TRAINER.IVLP.N_CTX_VISION={node.N_CTX_VISION} / PROMPT_DEPTH_VISION="
                             f"{node.PROMPT_DEPTH_VISION}; set both to 0 (no image prompts) or both >= 1")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.IVLP.INIT_STD={node.INIT_STD}; it must be > 0")
        if node.PROMPT_DEPTH_VISION > 0:
            self.check_vit_backbone(cfg, "IVLP's image prompts (TRAINER.IVLP.PROMPT_DEPTH_VISION > 0)")
        super().check_cfg(cfg)

    def reference_half_parameters(self) -> Sequence[str]:
        return () if self.cfg.TRAINER.IVLP.FP32_MASTER_WEIGHTS else ("ctx",)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.IVLP
        self.check_depth("TRAINER.IVLP.PROMPT_DEPTH_TEXT", node.PROMPT_DEPTH_TEXT, clip_model.transformer.layers,
                         "text")
        if node.PROMPT_DEPTH_VISION > 0:
            self.check_image_tower(clip_model, "IVLP's image prompts (TRAINER.IVLP.PROMPT_DEPTH_VISION > 0)")
            self.check_depth("TRAINER.IVLP.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION,
                             clip_model.visual.transformer.layers, "image")
        learner = IVLPPromptLearner(classnames, clip_model, node.N_CTX_TEXT, node.PROMPT_DEPTH_TEXT,
                                    node.N_CTX_VISION, node.PROMPT_DEPTH_VISION, ctx_init=node.CTX_INIT,
                                    init_std=node.INIT_STD)
        return DeepPromptCLIP(learner, self.make_text_encoder(clip_model), clip_model,
                              round_prompts_to_fp16=node.ROUND_PROMPTS_TO_FP16)
