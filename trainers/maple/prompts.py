"""Deep prompt learners: the learnable tokens of MaPLe, IVLP and VPT, and the ``PromptSet`` they hand CLIP.

Khattak, Rasheed, Maaz, Khan, Khan, "MaPLe: Multi-modal Prompt Learning", CVPR 2023, arXiv:2210.03117 (reference:
muzairkhattak/multimodal-prompt-learning@69bce21, whose ``trainers/independentVL.py`` and ``trainers/vpt.py`` hold
the IVLP and VPT baselines).  A prompt depth ``J`` means: ``P`` tokens enter a tower at layer 0 and are replaced by
fresh ones before layers ``1 .. J-1`` (the convention of ``clip/prompting.py``).

The pieces, reusable by methods built on them (PromptSRC, for instance, is IVLP plus losses):

- ``PromptSet``: what one forward gives the towers (text prompts with the layer-0 context inside, deep text
  prompts, layer-0 and deep visual prompts).  ``DeepPromptCLIP`` (``model.py``) runs the towers on it.
- ``template_context``: the reference's context init (the first ``n_ctx`` tokens of ``CTX_INIT``, the rest of the
  phrase staying frozen in the template, or random tokens behind "X" placeholders).
- ``prompt_list`` / ``layer_prompts``: ``N(0, std^2)`` deep prompt parameters of one tower.
- ``ClassPromptLearner``: the text context ``ctx`` and the class-name buffers (a ``PromptLearnerBase``).
- ``IVLPPromptLearner``: independent deep prompts in both towers; ``VisionPromptLearner``: the image tower only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from vlprompt import clip

from ..common.prompt_learner import PLACEHOLDER, SOT_POSITIONS, PromptLearnerBase, random_context

logger = logging.getLogger(__name__)

__all__ = ["PromptSet", "template_context", "prompt_list", "layer_prompts", "vision_width", "ClassPromptLearner",
           "IVLPPromptLearner", "VisionPromptLearner"]


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one forward pass, for both towers (every tensor may be fp32; the towers cast them)."""

    text: Optional[Tensor] = None  # (n_cls, 77, D) class prompts, layer-0 context inside; None = fixed text features
    deep_text: tuple[Tensor, ...] = ()  # (n_ctx_text, D) each: text layers 1 .. J_t-1
    visual: Optional[Tensor] = None  # (n_ctx_vision, W) layer-0 image tokens; None = the plain image tower
    deep_visual: tuple[Tensor, ...] = ()  # (n_ctx_vision, W) each: image layers 1 .. J_v-1

    def rounded_to_fp16(self) -> "PromptSet":
        """Every prompt but the text context rounded to fp16 values (dtype kept), as the reference's ``.half()``."""
        def rounded(tensor: Tensor) -> Tensor:
            return tensor.half().to(tensor.dtype)

        return replace(self, deep_text=tuple(map(rounded, self.deep_text)),
                       visual=None if self.visual is None else rounded(self.visual),
                       deep_visual=tuple(map(rounded, self.deep_visual)))


def template_context(clip_model: nn.Module, n_ctx: int, ctx_init: str, init_std: float) -> tuple[Tensor, str]:
    """Initial text context ``(n_ctx, D)`` and the template prefix it replaces the start of.

    With ``ctx_init`` of at least ``n_ctx`` BPE tokens the context is their embedding and the prefix is the whole
    phrase, so "a photo of a" with 2 tokens learns "a photo" and keeps "of a" frozen; otherwise the context is
    ``N(0, init_std^2)`` behind ``n_ctx`` "X" placeholders (the reference also does this for ``n_ctx > 4``).
    """
    phrase = ctx_init.replace("_", " ").strip()
    if phrase and n_ctx <= len(clip.encode(phrase)):
        with torch.no_grad():
            embedding = clip_model.token_embedding(clip.tokenize(phrase)).to(clip_model.dtype)  # (1, 77, D)
        return embedding[0, SOT_POSITIONS:SOT_POSITIONS + n_ctx].clone(), phrase  # (n_ctx, D)
    if phrase:
        logger.info(f"{n_ctx} context tokens > the tokens of CTX_INIT {phrase!r}: random init behind placeholders")
    ctx_dim = clip_model.ln_final.weight.shape[0]
    return random_context((n_ctx, ctx_dim), clip_model.dtype, init_std), " ".join([PLACEHOLDER] * n_ctx)


def prompt_list(count: int, n_tokens: int, width: int, init_std: float) -> nn.ParameterList:
    """``count`` prompts ``(n_tokens, width)``, each drawn from ``N(0, init_std^2)`` in fp32 (reference: std 0.02)."""
    prompts = nn.ParameterList()
    for _ in range(max(count, 0)):
        tokens = torch.empty(n_tokens, width)
        nn.init.normal_(tokens, std=init_std)
        prompts.append(nn.Parameter(tokens))
    return prompts


def layer_prompts(depth: int, n_tokens: int, width: int, init_std: float) -> tuple[Optional[nn.Parameter],
                                                                                    nn.ParameterList]:
    """Prompts of one tower with depth ``J``: the layer-0 tokens and ``J-1`` deep ones (``None, []`` for ``J = 0``)."""
    if depth < 1 or n_tokens < 1:
        return None, nn.ParameterList()
    first = prompt_list(1, n_tokens, width, init_std)[0]
    return first, prompt_list(depth - 1, n_tokens, width, init_std)


def vision_width(clip_model: nn.Module) -> int:
    """Token width of CLIP's ViT image tower (768 for ViT-B/16)."""
    return clip_model.visual.conv1.out_channels


class ClassPromptLearner(PromptLearnerBase):
    """Text context ``ctx (n_ctx, D)`` in the class prompts ``[SOT] ctx <rest of CTX_INIT> name . [EOT]``.

    ``class_prompts()`` gives ``(n_cls, 77, D)``; the class-name buffers are rebuilt for every class set and never
    checkpointed (``PromptLearnerBase``).  Subclasses add their deep prompts and return a ``PromptSet``.
    """

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, n_ctx: int, ctx_init: str = "a photo of a",
                 init_std: float = 0.02) -> None:
        # Not PromptLearnerBase.__init__: CoOp takes n_ctx from CTX_INIT's word count; here n_ctx is given and
        # only the first n_ctx tokens of the phrase are learned (the reference's rule).
        nn.Module.__init__(self)
        self.ctx_dim = clip_model.ln_final.weight.shape[0]
        self.class_token_position = "end"
        ctx, self.prompt_prefix = template_context(clip_model, n_ctx, ctx_init, init_std)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx)  # (n_ctx, D)
        self.build_class_tokens(classnames, clip_model)
        logger.info(f'Initial text context: "{self.prompt_prefix}" (the first {n_ctx} tokens learned)')

    def class_prompts(self) -> Tensor:
        """Class prompt embeddings ``(n_cls, 77, D)`` with the current context."""
        return self.construct_prompts(self.expand_ctx())

    def forward(self) -> "PromptSet":  # type: ignore[override]
        return PromptSet(text=self.class_prompts())


class IVLPPromptLearner(ClassPromptLearner):
    """Independent deep prompts in both towers (IVLP); nothing links the text prompts to the image prompts.

    Parameters: ``ctx`` (text layer 0), ``deep_text_prompts.{k}`` (text layer k+1), ``visual_ctx`` (image layer 0,
    absent without image prompts) and ``deep_visual_prompts.{k}`` (image layer k+1).
    """

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, n_ctx_text: int, text_depth: int,
                 n_ctx_vision: int, vision_depth: int, ctx_init: str = "a photo of a", init_std: float = 0.02) -> None:
        super().__init__(classnames, clip_model, n_ctx_text, ctx_init, init_std)
        self.deep_text_prompts = prompt_list(text_depth - 1, n_ctx_text, self.ctx_dim, init_std)
        width = vision_width(clip_model) if vision_depth > 0 else 0
        visual_ctx, self.deep_visual_prompts = layer_prompts(vision_depth, n_ctx_vision, width, init_std)
        self.register_parameter("visual_ctx", visual_ctx)
        logger.info(f"IVLP prompts: text {n_ctx_text} tokens x depth {text_depth}, "
                    f"image {n_ctx_vision if visual_ctx is not None else 0} tokens x depth {vision_depth}")

    def forward(self) -> PromptSet:  # type: ignore[override]
        return PromptSet(text=self.class_prompts(), deep_text=tuple(self.deep_text_prompts), visual=self.visual_ctx,
                         deep_visual=tuple(self.deep_visual_prompts))


class VisionPromptLearner(nn.Module):
    """Deep prompts of the image tower only (VPT-deep): ``visual_ctx`` (layer 0), ``deep_visual_prompts.{k}``."""

    def __init__(self, clip_model: nn.Module, n_ctx: int, depth: int, init_std: float = 0.02) -> None:
        super().__init__()
        visual_ctx, self.deep_visual_prompts = layer_prompts(depth, n_ctx, vision_width(clip_model), init_std)
        self.visual_ctx = visual_ctx
        logger.info(f"VPT prompts: {n_ctx} image tokens x depth {depth}")

    def forward(self) -> PromptSet:
        return PromptSet(visual=self.visual_ctx, deep_visual=tuple(self.deep_visual_prompts))
