"""Zero-shot CLIP baselines of the CoOp repository: hand-written prompts, nothing learned.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020, as
run by CoOp (Zhou et al., arXiv:2109.01134).  Reference implementation: KaiyangZhou/CoOp@ff61507
``trainers/zsclip.py``.

The class prompts are written from templates, encoded once by CLIP's frozen text tower and L2-normalised; an
image's logits are CLIP's scaled cosine similarities with them.  ``ZeroshotCLIP`` uses the dataset's own
template (the dataset class's ``TEMPLATE``); ``ZeroshotCLIP2`` ensembles the 7 ``IMAGENET_TEMPLATES_SELECT``
templates plus the dataset's own (except on ImageNet) by averaging the normalised features over templates.
Differences from the reference: docs/methods/zeroshot_clip.md.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.custom_clip import CustomCLIP, cosine_logits
from .common.prompt_trainer import ClipPromptTrainer
from .common.text_features import class_text_features
from .common.templates import IMAGENET_TEMPLATES_SELECT, dataset_template

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.ZEROSHOTCLIP = CN()
    # fp16 (CoOp: CLIP kept in half precision), fp32 or amp; fp16/amp fall back to fp32 on a CPU (warning)
    cfg.TRAINER.ZEROSHOTCLIP.PREC = "fp16"


class ZeroshotCLIPModel(CustomCLIP):
    """``images -> logits`` against fixed, L2-normalised class text features ``(n_cls, E)``."""

    per_image_text = False  # class text features are the same for every image (cached evaluation scores big chunks)

    def __init__(self, clip_model: nn.Module, text_features: Tensor) -> None:
        super().__init__(clip_model)
        self.register_buffer("text_features", text_features, persistent=False)  # (n_cls, E)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return cosine_logits(image_features, self.text_features, self.logit_scale)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipPromptTrainer):
    """Zero-shot CLIP with the dataset's hand-written template (CoOp's baseline).

    "Learning Transferable Visual Models From Natural Language Supervision", https://arxiv.org/abs/2103.00020
    """


    LEARNABLE = ()
    CFG_NODE = "ZEROSHOTCLIP"
    EVAL_FROM_IMAGE_FEATURES = True  # frozen image tower: test features are encoded once and cached

    def templates(self) -> Sequence[str]:
        return (dataset_template(self.cfg.DATASET.NAME),)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        templates = self.templates()
        logger.info(f"Prompt templates ({len(templates)}): {list(templates)}")
        logger.info(f"Prompts: {[templates[-1].format(name.replace('_', ' ')) for name in classnames]}")
        clip_model.to(self.device)  # the text side runs once, on the run's device
        text_features = class_text_features(clip_model, classnames, templates,
                                            truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        return ZeroshotCLIPModel(clip_model, text_features)

    def train(self) -> None:
        """Nothing to learn: log it, then test exactly as a finished training run does."""
        logger.info(f"{type(self).__name__} has no learnable parameters; skipping training")
        self.time_start = time.time()
        self.after_train()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Zero-shot CLIP with prompt ensembling over ImageNet templates (+ the dataset's own, except on ImageNet).

    "Learning Transferable Visual Models From Natural Language Supervision", https://arxiv.org/abs/2103.00020
    """

    def templates(self) -> Sequence[str]:
        if self.cfg.DATASET.NAME == "ImageNet":
            return IMAGENET_TEMPLATES_SELECT
        return IMAGENET_TEMPLATES_SELECT + (dataset_template(self.cfg.DATASET.NAME),)
