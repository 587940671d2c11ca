"""CoOp: Context Optimization — learnable prompt context vectors for a frozen CLIP.

Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134.
Reference implementation: KaiyangZhou/CoOp@ff61507 ``trainers/coop.py``.

The prompt ``[SOT] ctx_1..ctx_M name . [EOT]`` (one generic context or one per class, with the class name at
the end, in the middle or at the front) goes through CLIP's frozen text tower; the logits are CLIP's scaled
cosine similarities between image and prompt features, and only ``ctx`` is trained, with cross-entropy.  The
pieces shared with other methods live in ``trainers/common/`` (prompt learner, custom CLIP, trainer); this file
holds CoOp's config keys and choices.  Differences from the reference and how to restore its literal
behaviour: docs/methods/coop.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import nn

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.prompt_clip import PromptCLIP
from .common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase, coop_prompt_keys
from .common.prompt_trainer import ClipPromptTrainer

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.COOP = coop_prompt_keys()  # N_CTX 16, CSC, CTX_INIT, PREC fp16, CLASS_TOKEN_POSITION, ...


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization (CoOp).

    "Learning to Prompt for Vision-Language Models", https://arxiv.org/abs/2109.01134
    """


    LEARNABLE = ("prompt_learner",)
    EVAL_FROM_IMAGE_FEATURES = True  # only the text side is learned: test features are encoded once and cached

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.COOP
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}; "
                             f"choose one of {', '.join(CLASS_TOKEN_POSITIONS)}")
        if not node.CTX_INIT and node.N_CTX < 1:
            raise ValueError(f"TRAINER.COOP.N_CTX={node.N_CTX}; use at least 1 context vector or set CTX_INIT")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.COOP.INIT_STD={node.INIT_STD}; it must be > 0")
        super().check_cfg(cfg)

    def fp32_master_weights(self) -> bool:
        return self.cfg.TRAINER.COOP.FP32_MASTER_WEIGHTS

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.COOP
        prompt_learner = PromptLearnerBase(
            classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
            class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD,
        )
        return PromptCLIP(prompt_learner, self.make_text_encoder(clip_model), clip_model)
