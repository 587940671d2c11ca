"""``CustomCLIP``: the base of every method's model, a frozen CLIP image tower plus method-specific logits.

CoOp named its model ``CustomCLIP`` (KaiyangZhou/CoOp ``trainers/coop.py``); here every method's model
derives from one base that fixes the contract the trainers rely on:

- ``image_encoder`` (CLIP's visual tower), ``logit_scale`` (CLIP's learned log scale) and ``dtype`` (the
  compute dtype of the towers);
- ``encode_image(images) -> (B, E)`` L2-normalised image features;
- ``logits_from_image_features(features) -> (B, n_cls)``, so that ``forward(x) ==
  logits_from_image_features(encode_image(x))``;
- ``per_image_text``: True when the class text features depend on the image (CoCoOp); cached evaluation then
  scores test-sized batches instead of big chunks.

``ClipPromptTrainer`` checks a model with ``isinstance(model, CustomCLIP)`` before evaluating it from cached
image features.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CustomCLIP", "l2_normalize", "cosine_logits"]


def l2_normalize(features: Tensor) -> Tensor:
    """Rows divided by their L2 norm (CLIP's ``x / x.norm(dim=-1, keepdim=True)``)."""
    return features / features.norm(dim=-1, keepdim=True)


def cosine_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """``exp(logit_scale) * image_features @ text_features.T`` for L2-normalised ``(B, E)`` and ``(C, E)``."""
    return logit_scale.exp() * image_features @ text_features.t()  # (B, C)


class CustomCLIP(nn.Module):
    """A CLIP-based classifier: subclasses implement ``logits_from_image_features``."""

    per_image_text: bool = True

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the towers (half under the fp16 recipe), as OpenAI's ``CLIP.dtype``."""
        return self.image_encoder.conv1.weight.dtype

    def encode_image(self, image: Tensor) -> Tensor:
        """L2-normalised image features ``(B, E)`` of the image tower."""
        return l2_normalize(self.image_encoder(image.to(self.dtype)))

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        """Logits ``(B, n_cls)`` of L2-normalised image features ``(B, E)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits_from_image_features")

    def forward(self, image: Tensor) -> Tensor:
        return self.logits_from_image_features(self.encode_image(image))  # (B, n_cls)
