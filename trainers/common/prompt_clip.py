"""CLIP with a learned text prompt: CoOp's ``CustomCLIP``, shared by every CoOp-style method.

Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134.  Image features come
from CLIP's frozen image tower, text features from the frozen text tower applied to the prompt learner's
embeddings; the logits are CLIP's scaled cosine similarities.  Methods that only change how the prompts are
made (CoOp variants) reuse ``PromptCLIP`` with their own prompt learner.
"""
from __future__ import annotations

from torch import Tensor, nn

from .custom_clip import CustomCLIP, cosine_logits, l2_normalize
from .prompt_learner import PromptLearnerBase
from .text_encoder import TextEncoder

__all__ = ["PromptCLIP", "cosine_logits", "l2_normalize"]


class PromptCLIP(CustomCLIP):
    """``images (B, 3, R, R) -> logits (B, n_cls)`` with text features from ``prompt_learner()``.

    Attribute names follow CoOp's ``CustomCLIP`` (``prompt_learner``, ``image_encoder``, ``text_encoder``,
    ``logit_scale``), so ``LEARNABLE = ("prompt_learner",)`` selects the prompt and nothing else.
    """

    per_image_text = False  # class text features are the same for every image (cached evaluation scores big chunks)

    def __init__(self, prompt_learner: PromptLearnerBase, text_encoder: TextEncoder, clip_model: nn.Module) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def encode_text(self) -> Tensor:
        """L2-normalised text features of every class prompt ``(n_cls, E)``, recomputed on each call."""
        prompts = self.prompt_learner()  # (n_cls, 77, D)
        return l2_normalize(self.text_encoder(prompts, self.prompt_learner.tokenized_prompts))

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return cosine_logits(image_features, self.encode_text(), self.logit_scale)
