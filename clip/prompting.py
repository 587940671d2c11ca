"""Deep prompts for CLIP's two transformers: tokens that enter at layer 0 and are replaced before deeper layers.

Deep visual prompt tuning (VPT-deep: Jia et al., "Visual Prompt Tuning", arXiv:2203.12119) and its
vision-language versions, independent V-L prompting (IVLP) and MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt
Learning", arXiv:2210.03117; reference muzairkhattak/multimodal-prompt-learning@69bce21, ``clip/model.py``), all
use one convention, which ``clip/model.py`` implements for both towers without knowing which method asks:

- layer 0: ``P`` prompt tokens enter with the input.  Text tower: right after SOT (the class-name tokens, the EOT
  and the causal mask move with them, see ``insert_prompt_tokens``).  Image tower: after the class token and the
  patches, after the positional embedding is added (prompts get none) and before ``ln_pre``.
- layers ``1 .. J-1``: before block ``k`` the ``P`` outputs of block ``k-1`` at the prompt positions are
  discarded and replaced by the ``k``-th deep prompt, a fresh set of ``P`` tokens (``replace_prompt_tokens``).
- layers ``J ..``: the prompt positions carry on as ordinary tokens.

Every prompt tensor is ``(P, D)`` (shared by the batch) or ``(N or 1, P, D)``; it is cast to the activations'
dtype where it meets them, so fp32 prompts work with a half-precision CLIP.  The functions here are pure; the
learnable tensors belong to the caller (``trainers/maple/`` builds MaPLe, IVLP and VPT on them).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["TEXT_PROMPT_START", "batched_prompts", "check_deep_prompts", "insert_prompt_tokens",
           "replace_prompt_tokens"]

# The text prompts sit right after SOT (position 0), as in CoOp's "[SOT] ctx ... name . [EOT]" layout.
TEXT_PROMPT_START = 1


def batched_prompts(prompts: Tensor, batch: int, width: int, what: str = "prompt tokens") -> Tensor:
    """``(P, D)`` or ``(N or 1, P, D)`` prompts -> ``(N, P, D)`` (a broadcast view), after checking the shape."""
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0)  # (1, P, D)
    if prompts.dim() != 3 or prompts.shape[-1] != width:
        raise ValueError(f"{what} have shape {tuple(prompts.shape)}; expected (P, {width}) or (N or 1, P, {width}) "
                         "to match the transformer width")
    if prompts.shape[0] not in (1, batch):
        raise ValueError(f"{what} have batch {prompts.shape[0]}; expected 1 or the input batch {batch}")
    return prompts.expand(batch, -1, -1)  # (N, P, D)


def check_deep_prompts(deep_prompts: Sequence[Tensor], layers: int, n_tokens: int) -> None:
    """Raise unless there are at most ``layers - 1`` deep prompts, each of ``n_tokens`` tokens."""
    if len(deep_prompts) > layers - 1:
        raise ValueError(f"{len(deep_prompts)} deep prompts for a {layers}-layer transformer; at most {layers - 1} "
                         f"(prompt depth {layers}: layer 0 plus layers 1..{layers - 1})")
    for index, prompt in enumerate(deep_prompts):
        if prompt.shape[-2] != n_tokens:
            raise ValueError(f"deep prompt {index} (layer {index + 1}) has {prompt.shape[-2]} tokens; every layer "
                             f"must replace the {n_tokens} tokens that entered at layer 0")


def replace_prompt_tokens(x: Tensor, prompts: Tensor, start: int) -> Tensor:
    """Replace the ``P`` tokens at ``start .. start+P-1`` of a sequence-first ``x (L, N, D)`` by ``prompts``.

    Args:
        x: block input ``(L, N, D)``.
        prompts: ``(P, D)`` or ``(N or 1, P, D)``.
        start: first prompt position; negative counts from the end (``-P`` = the last ``P`` tokens).

    Returns:
        ``(L, N, D)``: ``x`` with the prompt rows swapped, in ``x``'s dtype.
    """
    seq_len, batch, width = x.shape
    prompts = batched_prompts(prompts, batch, width, "deep prompts")  # (N, P, D)
    n_tokens = prompts.shape[1]
    begin = start if start >= 0 else seq_len + start
    if begin < 0 or begin + n_tokens > seq_len:
        raise ValueError(f"deep prompts of {n_tokens} tokens at position {start} do not fit a sequence of {seq_len}")
    prompts = prompts.to(x.dtype).permute(1, 0, 2)  # (P, N, D)
    return torch.cat([x[:begin], prompts, x[begin + n_tokens:]], dim=0)  # (L, N, D)


def insert_prompt_tokens(tokens: Tensor, eot: Tensor, prompts: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Insert text prompts right after SOT; the sequence grows by ``P`` up to ``max_len``, the EOT moves by ``P``.

    Args:
        tokens: token embeddings ``(N, L, D)``, SOT at position 0.
        eot: EOT position of each row ``(N,)``.
        prompts: ``(P, D)`` or ``(N or 1, P, D)``.
        max_len: the text context length; the padding beyond it is dropped.

    Returns:
        ``(N, min(L+P, max_len), D)`` embeddings and the moved EOT positions ``(N,)``.
    """
    batch, seq_len, width = tokens.shape
    prompts = batched_prompts(prompts, batch, width, "text prompt tokens").to(tokens.dtype)  # (N, P, D)
    n_tokens = prompts.shape[1]
    out_len = min(seq_len + n_tokens, max_len)
    eot = eot + n_tokens
    if int(eot.max()) >= out_len:
        raise ValueError(f"{n_tokens} text prompt tokens push an EOT to position {int(eot.max())}, beyond the "
                         f"context length {max_len}; shorten the text or use fewer prompt tokens")
    start = TEXT_PROMPT_START
    x = torch.cat([tokens[:, :start], prompts, tokens[:, start:]], dim=1)  # (N, L+P, D)
    return x[:, :out_len], eot
