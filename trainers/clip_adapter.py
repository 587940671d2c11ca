"""CLIP-Adapter: a small residual MLP on CLIP's image features, trained on a few shots.

Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao, "CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
IJCV 2024, arXiv:2110.04544.  Reference implementation: gaopengcuhk/CLIP-Adapter@08d07f8 ``clip_adapter.py``
(a trainer file for CoOp's code base, run with CoOp's commands and configs).

CLIP's image feature ``f`` goes through a bottleneck MLP ``A`` (``E -> E/4 -> E``, no biases, ReLU after both
layers), whose output is blended with the frozen feature by the residual ratio ``alpha`` (0.2); the blend is
compared with the frozen text features of the dataset's hand-written prompt, as zero-shot CLIP does.  Only ``A``
is trained, with cross-entropy.  ``A`` has no biases and ReLU is positively homogeneous, so the blend of ``c f``
is ``c`` times the blend of ``f``: the normalised logits, and their gradients, do not depend on the feature's
norm, and the adapter works on the L2-normalised features that the feature cache keeps.
Differences from the reference: docs/methods/clip_adapter.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from .common.prompt_trainer import ClipPromptTrainer
from .common.templates import dataset_template
from .common.text_features import class_text_features

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.CLIP_ADAPTER = CN()
    # fp32 (the reference calls clip_model.float()), fp16 or amp; fp16/amp fall back to fp32 on a CPU (warned)
    cfg.TRAINER.CLIP_ADAPTER.PREC = "fp32"
    # Residual ratio alpha: weight of the adapter's output in the blend (the reference hard-codes 0.2)
    cfg.TRAINER.CLIP_ADAPTER.RATIO = 0.2
    # Bottleneck reduction: hidden width = embedding width // REDUCTION (the reference: 4)
    cfg.TRAINER.CLIP_ADAPTER.REDUCTION = 4


class Adapter(nn.Module):
    """``ReLU(W2 ReLU(W1 x))``, ``W1: E -> E/r``, ``W2: E/r -> E``, no biases (the reference's layer names)."""

    def __init__(self, c_in: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c_in, c_in // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c_in // reduction, c_in, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)  # (B, E)


class CLIPAdapterModel(CustomCLIP):
    """Frozen CLIP, an ``Adapter`` on the image features and fixed class text features ``(n_cls, E)``."""

    per_image_text = False  # the text features are the same for every image

    def __init__(self, clip_model: nn.Module, text_features: Tensor, ratio: float, reduction: int) -> None:
        super().__init__(clip_model)
        # Named as the reference registers it, so its checkpoints (clip_adapter/model.pth.tar-N) load unchanged
        self.clip_adapter = Adapter(clip_model.visual.output_dim, reduction)
        self.ratio = ratio
        self.register_buffer("text_features", text_features, persistent=False)  # (n_cls, E), normalised

    def blend(self, image_features: Tensor) -> Tensor:
        """``alpha A(f) + (1 - alpha) f`` in the adapter's dtype."""
        f = image_features.to(self.clip_adapter.fc[0].weight.dtype)
        return self.ratio * self.clip_adapter(f) + (1 - self.ratio) * f  # (B, E)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        text_features = self.text_features.to(self.clip_adapter.fc[0].weight.dtype)
        return cosine_logits(l2_normalize(self.blend(image_features)), text_features, self.logit_scale.float())


@TRAINER_REGISTRY.register()
class CLIP_Adapter(ClipPromptTrainer):  # noqa: N801  (the reference's registry name)
    """CLIP-Adapter (visual adapter).

    "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", https://arxiv.org/abs/2110.04544
    """

    LEARNABLE = ("clip_adapter",)
    CFG_NODE = "CLIP_ADAPTER"
    EVAL_FROM_IMAGE_FEATURES = True  # the image tower is frozen: test features are encoded once and cached

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.CLIP_ADAPTER
        if not 0.0 <= node.RATIO <= 1.0:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.RATIO={node.RATIO}; the residual ratio must be in [0, 1]")
        if node.REDUCTION < 1:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.REDUCTION={node.REDUCTION}; it must be >= 1")
        super().check_cfg(cfg)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.method_cfg()
        template = dataset_template(self.cfg.DATASET.NAME)
        logger.info(f"Prompts: {[template.format(name.replace('_', ' ')) for name in classnames]}")
        clip_model.to(self.device)  # the text side runs once, on the run's device
        text_features = class_text_features(clip_model, classnames, (template,),
                                            truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        return CLIPAdapterModel(clip_model, text_features, node.RATIO, node.REDUCTION)
