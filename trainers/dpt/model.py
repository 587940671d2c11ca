"""DPT's model: the discrete text prompt in CLIP's class prompts and the shared visual prompt.

``DPTPromptLearner`` turns the selected token ids into context embeddings and builds the class prompts
``[SOT] <tokens> <rest of CTX_INIT> name . [EOT]``; ``DPTCLIP`` runs both towers with one selection per forward.
Background and the list of differences from the reference: ``docs/methods/dpt.md``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from vlprompt import clip

from ..common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from ..common.prompt_learner import PLACEHOLDER, PromptLearnerBase
from ..common.text_encoder import TextEncoder
from .discrete_prompt import DiscretePrompt, RoundTripOracle

logger = logging.getLogger(__name__)

TEMPLATES = ("partial", "pure")


def template_parts(ctx_init: str, n_ctx: int, template: str) -> tuple[str, list[int]]:
    """The class-prompt prefix string and the template ids that stay after the learned tokens.

    ``partial``: the learned tokens replace the first ``n_ctx`` tokens of ``ctx_init`` (as the reference does),
    so "a photo of a" with ``n_ctx`` 1 leaves "photo of a"; when ``ctx_init`` has fewer than ``n_ctx`` tokens, or
    with ``pure``, the prompt is ``n_ctx`` placeholders and nothing stays.
    """
    words = ctx_init.replace("_", " ").strip()
    if template == "partial" and words:
        ids = clip.encode(words)
        if n_ctx <= len(ids):
            return words, ids[n_ctx:]
        logger.info(f"N_CTX={n_ctx} > {len(ids)} tokens of CTX_INIT {words!r}: using {PLACEHOLDER!r} placeholders")
    return " ".join([PLACEHOLDER] * n_ctx), []


def prompt_record(ids: Sequence[int], tail_ids: Sequence[int], oracle: RoundTripOracle) -> dict:
    """What the prompt reads as: ids, tokens, the decoded context and the full template (``{}`` = class name)."""
    ids = [int(i) for i in ids]
    return {
        "ids": ids,
        "tokens": [oracle.tokenizer.decoder[i] for i in ids],
        "prompt": oracle.decode(ids).strip(),
        "template": oracle.decode(ids + list(tail_ids)) + "{}.",
    }


class DPTPromptLearner(PromptLearnerBase):
    """Discrete context + frozen class-name buffers (+ the shared visual projection).

    ``forward() -> (prompts (n_cls, 77, D), ctx (n_ctx, D), ids (n_ctx,))``.  Parameter names follow the
    reference: ``emb_toggler.scores``, ``proj.weight``, ``proj.bias``.
    """

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, emb_toggler: DiscretePrompt,
                 ctx_init: str = "a photo of a", template: str = "partial", visual_width: Optional[int] = None) -> None:
        # Not PromptLearnerBase.__init__: that builds CoOp's continuous context, which DPT has no use for
        # (the reference kept one as a dead parameter).
        nn.Module.__init__(self)
        self.ctx_dim = clip_model.ln_final.weight.shape[0]
        self.class_token_position = "end"
        self.n_ctx = emb_toggler.n_ctx
        self.prompt_prefix, self.tail_ids = template_parts(ctx_init, self.n_ctx, template)
        self.emb_toggler = emb_toggler
        self.proj = nn.Linear(self.ctx_dim, visual_width) if visual_width else None  # PyTorch default init
        # CLIP's frozen token embeddings E (V, D); rebuilt from CLIP each run, never checkpointed.
        self.register_buffer("token_embedding", clip_model.token_embedding.weight.detach().clone(), persistent=False)
        self.build_class_tokens(classnames, clip_model)
        logger.info(f'DPT class prompts: "{self.prompt_prefix} {{}}." with the first {self.n_ctx} tokens learned')

    def forward(self) -> tuple[Tensor, Tensor, Tensor]:
        ctx, ids = self.emb_toggler(self.token_embedding)  # (n_ctx, D), (n_ctx,)
        return self.construct_prompts(self.expand_ctx(ctx)), ctx, ids  # prompts (n_cls, 77, D)

    def visual_prompts(self, ctx: Tensor) -> Tensor:
        """Shared visual prompt ``(1, n_ctx, vis_width)`` = ``proj(ctx)``."""
        return self.proj(ctx.to(self.proj.weight.dtype)).unsqueeze(0)

    def describe(self) -> dict:
        """The current selection as a ``prompt_record``."""
        return prompt_record(self.emb_toggler.select().ids.tolist(), self.tail_ids, self.emb_toggler.oracle)


class DPTCLIP(CustomCLIP):
    """``images (B, 3, R, R) -> logits (B, n_cls)``: discrete text prompt, optional shared visual prompt."""

    per_image_text = False

    def __init__(self, prompt_learner: DPTPromptLearner, text_encoder: TextEncoder, clip_model: nn.Module,
                 shared_visual: bool = True) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.shared_visual = shared_visual
        self.last_ids: tuple[int, ...] = ()
        self._text_cache: Optional[tuple[tuple[int, ...], Tensor]] = None  # (ids, text features), no-grad only

    def text_features(self, prompts: Tensor, ids: tuple[int, ...]) -> Tensor:
        """Normalised class text features ``(n_cls, E)``; without grad they are reused while the ids stay the same."""
        if not torch.is_grad_enabled() and self._text_cache is not None and self._text_cache[0] == ids:
            return self._text_cache[1]
        features = l2_normalize(self.text_encoder(prompts, self.prompt_learner.tokenized_prompts))
        self._text_cache = None if torch.is_grad_enabled() else (ids, features)
        return features

    def encode_image(self, image: Tensor, ctx: Optional[Tensor] = None) -> Tensor:
        """Normalised image features ``(B, E)``, with the shared visual prompt (``proj(ctx)``, the current
        selection's when ``ctx`` is None) when ``shared_visual``."""
        image = image.to(self.dtype)
        if not self.shared_visual:
            return l2_normalize(self.image_encoder(image))
        if ctx is None:
            ctx = self.prompt_learner()[1]
        prompt_tokens = self.prompt_learner.visual_prompts(ctx)  # (1, n_ctx, vis_width)
        return l2_normalize(self.image_encoder(image, prompt_tokens=prompt_tokens))

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        prompts, _, ids = self.prompt_learner()
        self.last_ids = tuple(ids.tolist())
        return cosine_logits(image_features, self.text_features(prompts, self.last_ids), self.logit_scale)

    def forward(self, image: Tensor) -> Tensor:
        prompts, ctx, ids = self.prompt_learner()  # one selection serves both towers
        self.last_ids = tuple(ids.tolist())
        text_features = self.text_features(prompts, self.last_ids)
        return cosine_logits(self.encode_image(image, ctx), text_features, self.logit_scale)  # (B, n_cls)
