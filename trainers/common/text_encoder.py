"""CLIP text tower applied to already-embedded prompts, shared by every prompt-learning method.

CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134) feeds learned
context vectors through CLIP's frozen text transformer (Radford et al. 2021, arXiv:2103.00020); this module
is that pass (CoOp's ``TextEncoder``, KaiyangZhou/CoOp@ff61507 ``trainers/coop.py``), written once.

Deviation, on by default: the sequence is cropped to the last EOT position in the batch + 1 before the
transformer.  Attention is causal, so the rows up to each EOT do not depend on later positions and the
output equals the full 77-token pass up to float rounding, while the cost drops with the prompt length.
``truncate_at_eot=False`` runs all positions, literally as the reference.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from vlprompt.clip.prompting import TEXT_PROMPT_START

logger = logging.getLogger(__name__)


class TextEncoder(nn.Module):
    """``(prompt embeddings (N, L, D), token ids (N, L)) -> text features (N, E)``, read at each row's EOT."""

    def __init__(self, clip_model: nn.Module, truncate_at_eot: bool = True) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.truncate_at_eot = truncate_at_eot

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the text tower (fp16 under the reference recipe, fp32 after ``.float()``)."""
        return self.text_projection.dtype

    def forward(self, prompts: Tensor, tokenized_prompts: Tensor, deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Encode prompts.

        Args:
            prompts: token embeddings ``(N, L, D)`` without positional embedding, ``L`` = context length.
            tokenized_prompts: ids ``(N, L)``; each row's EOT is its largest id (argmax).
            deep_prompts: optional deep text prompts ``(P, D)`` of layers 1, 2, ...: each replaces the ``P``
                tokens after SOT before its block (``clip/prompting.py``; MaPLe, IVLP).  They sit before every
                EOT, so the crop below keeps them.

        Returns:
            Text features ``(N, E)`` (not normalised).
        """
        eot = tokenized_prompts.argmax(dim=-1)  # (N,)
        seq_len = prompts.shape[1]
        if self.truncate_at_eot:
            seq_len = int(eot.max()) + 1  # one host sync; later positions cannot affect any EOT row
            prompts = prompts[:, :seq_len]  # (N, L', D)
        x = prompts + self.positional_embedding[:seq_len].to(self.dtype)  # (N, L', D)
        x = x.permute(1, 0, 2)  # (L', N, D): CLIP's transformer is sequence-first
        if deep_prompts:
            x = self.transformer(x, deep_prompts=deep_prompts, prompt_start=TEXT_PROMPT_START)
        else:
            x = self.transformer(x)
        x = x.permute(1, 0, 2)  # (N, L', D)
        x = self.ln_final(x).to(self.dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, eot] @ self.text_projection  # (N, E)
