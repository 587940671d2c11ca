"""LMPT's model: CoOp's prompted CLIP that also hands out its prompt embeddings and embeds captions.

The classification side is CoOp's ``PromptCLIP`` (class-specific contexts, ``100 cos(image, class text)``).
The class-specific embedding loss compares the prompt learner's output ``(n_cls, 77, D)`` (before the
positional embedding and the text transformer) with the *token embeddings* of each training image's caption
``(B, 77, D)``; captions never pass through the text encoder.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from vlprompt import clip

from ..common.prompt_clip import PromptCLIP, cosine_logits, l2_normalize
from ..common.prompt_learner import PromptLearnerBase


def tokenize_captions(captions: Sequence[str], max_chars: int) -> Tensor:
    """CLIP token ids ``(N, 77)`` of the captions cut to ``max_chars`` characters (``< 0``: uncut).

    The character cut comes first (it may end mid-word, as in LMPT); captions still longer than 77 tokens are
    then truncated by the tokenizer.
    """
    texts = [c if max_chars < 0 else c[:max_chars] for c in captions]
    return clip.tokenize(texts, truncate=True).long()


class LMPTCLIP(PromptCLIP):
    """``PromptCLIP`` whose training forward also returns the prompts, plus the frozen caption embedding."""

    def __init__(self, prompt_learner: PromptLearnerBase, text_encoder: nn.Module, clip_model: nn.Module) -> None:
        super().__init__(prompt_learner, text_encoder, clip_model)
        self.token_embedding = clip_model.token_embedding  # frozen word embeddings of the captions

    def forward_with_prompts(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, n_cls)`` and the prompt embeddings ``(n_cls, 77, D)`` they came from."""
        prompts = self.prompt_learner()  # (n_cls, 77, D)
        text_features = l2_normalize(self.text_encoder(prompts, self.prompt_learner.tokenized_prompts))
        return cosine_logits(self.encode_image(image), text_features, self.logit_scale), prompts

    @torch.no_grad()
    def embed_captions(self, tokens: Tensor) -> Tensor:
        """Token embeddings ``(B, 77, D)`` in fp32 of caption ids ``(B, 77)`` (no positions, no transformer)."""
        return self.token_embedding(tokens).float()
