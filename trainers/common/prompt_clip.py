"""CLIP with a learned text prompt: CoOp's ``CustomCLIP`` (``shared/specs/coop_family.md`` §4.4), shared.

Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134.  Image features come
from CLIP's frozen image tower, text features from the frozen text tower applied to the prompt learner's
embeddings; the logits are CLIP's scaled cosine similarities.  Methods that only change how the prompts are
made (CoOp variants) reuse ``PromptCLIP`` with their own prompt learner.
"""
from __future__ import annotations

from torch import Tensor, nn

from .prompt_learner import PromptLearnerBase
from .text_encoder import TextEncoder


def l2_normalize(features: Tensor) -> Tensor:
    """Rows divided by their L2 norm (CLIP's ``x / x.norm(dim=-1, keepdim=True)``)."""
    return features / features.norm(dim=-1, keepdim=True)


def cosine_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """``exp(logit_scale) * image_features @ text_features.T`` for L2-normalised ``(B, E)`` and ``(C, E)``."""
    return logit_scale.exp() * image_features @ text_features.t()  # (B, C)


class PromptCLIP(nn.Module):
    """``images (B, 3, R, R) -> logits (B, n_cls)`` with text features from ``prompt_learner()``.

    Attribute names follow CoOp's ``CustomCLIP`` (``prompt_learner``, ``image_encoder``, ``text_encoder``,
    ``logit_scale``), so ``LEARNABLE = ("prompt_learner",)`` selects the prompt and nothing else.
    """

    PER_IMAGE_TEXT = False  # class text features are the same for every image (cached evaluation scores big chunks)

    def __init__(self, prompt_learner: PromptLearnerBase, text_encoder: TextEncoder, clip_model: nn.Module) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner
        self.image_encoder = clip_model.visual
        self.text_encoder = text_encoder
        self.logit_scale = clip_model.logit_scale

    @property
    def dtype(self):
        return self.text_encoder.dtype

    def encode_image(self, image: Tensor) -> Tensor:
        """L2-normalised image features ``(B, E)``."""
        return l2_normalize(self.image_encoder(image.to(self.dtype)))

    def encode_text(self) -> Tensor:
        """L2-normalised text features of every class prompt ``(n_cls, E)``, recomputed on each call."""
        prompts = self.prompt_learner()  # (n_cls, 77, D)
        return l2_normalize(self.text_encoder(prompts, self.prompt_learner.tokenized_prompts))

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        """Logits ``(B, n_cls)`` of L2-normalised image features ``(B, E)`` (cached evaluation)."""
        return cosine_logits(image_features, self.encode_text(), self.logit_scale)

    def forward(self, image: Tensor) -> Tensor:
        return self.logits_from_image_features(self.encode_image(image))  # (B, n_cls)
