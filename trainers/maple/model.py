"""``DeepPromptCLIP``: CLIP's two towers run with the deep prompts of a learner (MaPLe, IVLP, VPT).

The learner's ``forward()`` returns a ``PromptSet`` (``prompts.py``); the text tower encodes its class prompts with
the deep text prompts (or the model keeps fixed text features, for VPT), the image tower appends its layer-0
visual prompts and replaces them with the deep ones, and the logits are CLIP's scaled cosine similarities.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from ..common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from ..common.text_encoder import TextEncoder
from .prompts import PromptSet

__all__ = ["DeepPromptCLIP"]


class DeepPromptCLIP(CustomCLIP):
    """``images (B, 3, R, R) -> logits (B, n_cls)`` with deep prompts from ``prompt_learner()``.

    Args:
        prompt_learner: a module whose ``forward()`` returns a ``PromptSet``; text prompts need its
            ``tokenized_prompts`` buffer (the EOT positions).
        text_encoder: the shared text tower (``trainers/common/text_encoder.py``).
        clip_model: CLIP, already in the run's precision.
        fixed_text_features: L2-normalised class features ``(n_cls, E)`` used when the learner gives no text
            prompts (VPT's hand-written prompts).
        round_prompts_to_fp16: round the prompt tokens to fp16 values before they enter a tower (the reference's
            ``.half()``; only changes fp32 runs).
    """

    per_image_text = False  # the class text features are the same for every image

    def __init__(self, prompt_learner: nn.Module, text_encoder: TextEncoder, clip_model: nn.Module,
                 fixed_text_features: Optional[Tensor] = None, round_prompts_to_fp16: bool = False) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.round_prompts_to_fp16 = round_prompts_to_fp16
        self.register_buffer("fixed_text_features", fixed_text_features, persistent=False)  # (n_cls, E) or None
        self._reused: Optional[tuple[PromptSet, Tensor]] = None  # (prompts, text features) inside reuse_prompts()

    def prompt_set(self) -> PromptSet:
        """The learner's prompts for one forward (rounded to fp16 values when asked)."""
        prompts = self.prompt_learner()
        return prompts.rounded_to_fp16() if self.round_prompts_to_fp16 else prompts

    def encode_text(self, prompts: PromptSet) -> Tensor:
        """L2-normalised class text features ``(n_cls, E)``: prompted, or the fixed ones without text prompts."""
        if prompts.text is None:
            if self.fixed_text_features is None:
                raise ValueError(f"{type(self.prompt_learner).__name__} gives no text prompts and the model has no "
                                 "fixed_text_features; pass them to DeepPromptCLIP")
            return self.fixed_text_features
        features = self.text_encoder(prompts.text, self.prompt_learner.tokenized_prompts, prompts.deep_text)
        return l2_normalize(features)

    def current_prompts(self) -> tuple[PromptSet, Tensor]:
        """The prompts and class text features: computed now, or the ones frozen by ``reuse_prompts()``."""
        if self._reused is not None:
            return self._reused
        prompts = self.prompt_set()
        return prompts, self.encode_text(prompts)

    def encode_image(self, image: Tensor, prompts: Optional[PromptSet] = None) -> Tensor:
        """L2-normalised image features ``(B, E)`` with the visual prompts (the current ones when not given)."""
        prompts = self.current_prompts()[0] if prompts is None else prompts
        image = image.to(self.dtype)
        if prompts.visual is None:
            return l2_normalize(self.image_encoder(image))
        return l2_normalize(self.image_encoder(image, prompt_tokens=prompts.visual, deep_prompts=prompts.deep_visual))

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return cosine_logits(image_features, self.current_prompts()[1], self.logit_scale)

    def forward(self, image: Tensor) -> Tensor:
        prompts, text_features = self.current_prompts()  # one learner call serves both towers
        return cosine_logits(self.encode_image(image, prompts), text_features, self.logit_scale)  # (B, n_cls)

    @contextlib.contextmanager
    def reuse_prompts(self) -> Iterator[None]:
        """Inside the block, compute the prompts and the class text features once, without gradients.

        For evaluation: the prompts do not depend on the images, so the reference's text-tower pass over every
        class for every test batch gives the same features each time.
        """
        with torch.no_grad():
            prompts = self.prompt_set()
            self._reused = (prompts, self.encode_text(prompts))
        try:
            yield
        finally:
            self._reused = None
