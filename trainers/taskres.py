"""TaskRes: a learned residual added to CLIP's frozen zero-shot classifier.

Yu, Lu, Jin, Chen, Wang, "Task Residual for Tuning Vision-Language Models", CVPR 2023, arXiv:2211.10277;
reference geekyutao/TaskRes (``trainers/taskres.py``).  The class text features of the hand-written prompts,
``t0`` (the template features averaged per class), stay fixed; the classifier is ``t0 + alpha * x`` with ``x``
(n_cls, E) learned from zero, and the logits are CLIP's scaled cosine similarities.  The whole method is this
file: it is the worked example of docs/write-your-own-method.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from vlprompt import clip

from .common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from .common.prompt_trainer import ClipPromptTrainer
from .common.templates import IMAGENET_TEMPLATES_SELECT, dataset_template


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.TASKRES = CN()
    # fp32 (the reference runs the model in fp32 after building it), fp16 or amp
    cfg.TRAINER.TASKRES.PREC = "fp32"
    # alpha, the scale of the learned residual (the reference's RESIDUAL_SCALE; its paper: 0.5 on ImageNet, 1 else)
    cfg.TRAINER.TASKRES.RESIDUAL_SCALE = 1.0


class TaskResLearner(nn.Module):
    """``forward() -> t0 + alpha * x``, the classifier ``(n_cls, E)``; names as the reference's."""

    def __init__(self, base_text_features: Tensor, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("base_text_features", base_text_features, persistent=False)  # rebuilt per run
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(base_text_features))

    def forward(self) -> Tensor:
        return self.base_text_features + self.alpha * self.text_feature_residuals


class TaskResCLIP(CustomCLIP):
    per_image_text = False  # one classifier for every image

    def __init__(self, prompt_learner: TaskResLearner, clip_model: nn.Module) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        text_features = l2_normalize(self.prompt_learner()).to(image_features.dtype)
        return cosine_logits(image_features, text_features, self.logit_scale)


@TRAINER_REGISTRY.register()
class TaskRes(ClipPromptTrainer):
    """Task Residual Tuning. "Task Residual for Tuning Vision-Language Models", https://arxiv.org/abs/2211.10277"""

    LEARNABLE = ("prompt_learner",)
    FROZEN_BUFFERS = ("base_text_features",)  # reference checkpoints carry t0; ours rebuild it
    EVAL_FROM_IMAGE_FEATURES = True  # frozen image tower: test features are encoded once and cached

    def templates(self) -> Sequence[str]:
        own = dataset_template(self.cfg.DATASET.NAME)
        return (*IMAGENET_TEMPLATES_SELECT, own) if self.cfg.DATASET.NAME == "ImageNet" else (own,)

    @torch.no_grad()
    def base_text_features(self, clip_model: nn.Module, classnames: Sequence[str]) -> Tensor:
        """``t0``: per class, the text features of every template (not normalised), averaged."""
        encoder, templates = self.make_text_encoder(clip_model), self.templates()
        tokens = clip.tokenize([t.format(c.replace("_", " ")) for c in classnames for t in templates]).long()
        features = encoder(clip_model.token_embedding(tokens).to(encoder.dtype), tokens)  # (n_cls * T, E)
        return features.float().view(len(classnames), len(templates), -1).mean(1)  # (n_cls, E)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        alpha = self.cfg.TRAINER.TASKRES.RESIDUAL_SCALE
        return TaskResCLIP(TaskResLearner(self.base_text_features(clip_model, classnames), alpha), clip_model)
