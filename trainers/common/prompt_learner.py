"""Learnable context vectors around frozen class-name tokens: the prompt of CoOp and its descendants.

Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, arXiv:2109.01134 (reference:
KaiyangZhou/CoOp@ff61507 ``trainers/coop.py``, ``PromptLearner``).  A prompt is
``[SOT] ctx_1 ... ctx_M name . [EOT] pad`` where the context vectors ``ctx`` are learned and everything else is
CLIP's frozen token embeddings.

``PromptLearnerBase`` holds, written once:
- context init from words (``ctx_init``) or from N(0, ``init_std``^2), generic ``(M, D)`` or class-specific
  ``(n_cls, M, D)`` (CSC);
- the token buffers ``token_prefix`` (SOT) and ``token_suffix`` (name, ".", EOT, padding) embedded from the
  template ``"X X ... X name."``, plus ``tokenized_prompts`` (for the EOT position).  They are rebuilt from the
  class names of the current dataset every time the learner is built, so they are *non-persistent*: they
  never enter a checkpoint, and a model trained on base classes is evaluated on new ones;
- the class-token layouts ``end`` / ``middle`` / ``front``, as one vectorised gather instead of CoOp's
  per-class Python loop (same values).
Subclasses (CoCoOp, ...) override ``forward`` and call ``construct_prompts`` with their own context.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from vlprompt import clip

logger = logging.getLogger(__name__)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"  # stands for one context slot in the prompt strings; its embedding is replaced by ctx
SOT_POSITIONS = 1  # token_prefix holds position 0 only (SOT)


def coop_prompt_keys(reference: str = "CoOp") -> CN:
    """The config keys of a CoOp-style prompt (CoOp, KgCoOp, ...): a node a method places under ``TRAINER``."""
    node = CN()
    # Number of context vectors M (ignored when CTX_INIT is set: its word count is used)
    node.N_CTX = 16
    # Class-specific contexts, one (M, D) set per class; ignored (warned) when CTX_INIT is set
    node.CSC = False
    # Words to initialise the context from, e.g. "a photo of a" ("_" reads as a space); "" = random N(0, INIT_STD^2)
    node.CTX_INIT = ""
    # fp16 (the reference's default: CLIP and ctx in half precision), fp32 or amp; fp16/amp need CUDA, else fp32
    node.PREC = "fp16"
    # Where the class-name tokens go relative to the context: end, middle or front
    node.CLASS_TOKEN_POSITION = "end"
    # Standard deviation of the random context init (the reference hard-codes 0.02)
    node.INIT_STD = 0.02
    # True keeps ctx in fp32 under PREC fp16 and casts it to fp16 only where it meets CLIP; False is the
    # reference's literal recipe: ctx is itself an fp16 parameter updated by SGD in fp16, where small updates
    # round away
    node.FP32_MASTER_WEIGHTS = True
    return node


def context_from_words(clip_model: nn.Module, ctx_init: str) -> tuple[Tensor, str]:
    """Token embeddings of the phrase ``ctx_init`` (``_`` -> space): ``(n_ctx, D)`` and the phrase.

    As in CoOp, ``n_ctx`` is the number of space-separated words and the first ``n_ctx`` BPE tokens after SOT
    are taken; a phrase with multi-token words therefore leaves its last tokens frozen in the suffix (warned).
    """
    phrase = ctx_init.replace("_", " ").strip()
    n_ctx = len(phrase.split(" "))
    n_tokens = len(clip.encode(phrase))
    if n_tokens != n_ctx:
        logger.warning(f"CTX_INIT {phrase!r} has {n_ctx} words but {n_tokens} BPE tokens; the first {n_ctx} "
                       f"tokens become learnable and the rest stay frozen (CoOp behaviour)")
    tokens = clip.tokenize(phrase)  # (1, 77)
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokens).to(clip_model.dtype)  # (1, 77, D)
    return embedding[0, SOT_POSITIONS:SOT_POSITIONS + n_ctx].clone(), phrase  # (n_ctx, D)


def random_context(shape: Sequence[int], dtype: torch.dtype, init_std: float) -> Tensor:
    """Context vectors drawn from N(0, init_std^2) with the global torch RNG (seeded by ``train.py``)."""
    ctx = torch.empty(*shape, dtype=dtype)
    nn.init.normal_(ctx, std=init_std)
    return ctx


def layout_index(name_lens: Sequence[int], n_ctx: int, seq_len: int, position: str) -> Tensor:
    """Where each output position takes its embedding from, in the ``end`` order ``[SOT, ctx, name, rest]``.

    Returns a long tensor ``(n_cls, seq_len)``; row ``i`` is a permutation of ``0..seq_len-1`` that moves the
    ``name_lens[i]`` class-name tokens to the front of the context (``front``) or between its two halves
    (``middle``, first half = ``n_ctx // 2`` vectors).  ``end`` is the identity.
    """
    if position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(f"class token position {position!r}; choose one of {', '.join(CLASS_TOKEN_POSITIONS)}")
    rows = []
    half = n_ctx // 2
    for name_len in name_lens:
        ctx = list(range(SOT_POSITIONS, SOT_POSITIONS + n_ctx))
        name = list(range(SOT_POSITIONS + n_ctx, SOT_POSITIONS + n_ctx + name_len))
        rest = list(range(SOT_POSITIONS + n_ctx + name_len, seq_len))
        if position == "end":
            order = ctx + name
        elif position == "middle":
            order = ctx[:half] + name + ctx[half:]
        else:
            order = name + ctx
        rows.append([0] + order + rest)
    return torch.tensor(rows, dtype=torch.long)


class PromptLearnerBase(nn.Module):
    """Context vectors ``ctx`` + frozen class-name token buffers; ``forward()`` -> prompts ``(n_cls, 77, D)``.

    Args:
        classnames: class names of the current dataset (``_`` is read as a space).
        clip_model: CLIP already cast to the run's precision; ``ctx`` gets its dtype.
        n_ctx: number of context vectors (ignored when ``ctx_init`` is given: the word count is used).
        ctx_init: words to initialise a generic context from (CoOp's ``CTX_INIT``), or "" for random.
        csc: class-specific contexts ``(n_cls, n_ctx, D)`` instead of one generic ``(n_ctx, D)``; as in
            CoOp it is ignored (with a warning) when ``ctx_init`` is given.
        class_token_position: ``end``, ``middle`` or ``front``.
        init_std: standard deviation of the random context init (CoOp: 0.02).
    """

    def __init__(
        self,
        classnames: Sequence[str],
        clip_model: nn.Module,
        n_ctx: int,
        ctx_init: str = "",
        csc: bool = False,
        class_token_position: str = "end",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"class_token_position={class_token_position!r}; "
                             f"choose one of {', '.join(CLASS_TOKEN_POSITIONS)}")
        self.n_cls = len(classnames)
        self.ctx_dim = clip_model.ln_final.weight.shape[0]
        self.class_token_position = class_token_position
        if ctx_init:
            if csc:
                logger.warning("CSC is ignored when CTX_INIT is set: the context is generic (CoOp behaviour)")
            ctx_vectors, prompt_prefix = context_from_words(clip_model, ctx_init)
            n_ctx = ctx_vectors.shape[0]
            logger.info(f'Initial context: "{prompt_prefix}"')
        else:
            shape = (self.n_cls, n_ctx, self.ctx_dim) if csc else (n_ctx, self.ctx_dim)
            ctx_vectors = random_context(shape, clip_model.dtype, init_std)
            prompt_prefix = " ".join([PLACEHOLDER] * n_ctx)
            logger.info("Initializing class-specific contexts" if csc else "Initializing a generic context")
            logger.info(f'Initial context: "{prompt_prefix}"')
        logger.info(f"Number of context words (tokens): {n_ctx}")
        self.n_ctx = n_ctx
        self.prompt_prefix = prompt_prefix
        self.ctx = nn.Parameter(ctx_vectors)  # (n_ctx, D) or (n_cls, n_ctx, D)
        self.build_class_tokens(classnames, clip_model)

    def build_class_tokens(self, classnames: Sequence[str], clip_model: nn.Module) -> None:
        """(Re)build ``token_prefix``, ``token_suffix``, ``tokenized_prompts`` and the layout for ``classnames``."""
        names = [name.replace("_", " ") for name in classnames]
        self.n_cls = len(names)
        self.name_lens = [len(clip.encode(name)) for name in names]
        prompts = [f"{self.prompt_prefix} {name}." for name in names]
        tokenized = clip.tokenize(prompts).long()  # (n_cls, 77)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).to(clip_model.dtype)  # (n_cls, 77, D)
        # Frozen and rebuilt from the class names each run: non-persistent, so checkpoints hold only ``ctx``
        # (and a subclass's own parameters) and a checkpoint loads for any class set.
        self.register_buffer("token_prefix", embedding[:, :SOT_POSITIONS].clone(), persistent=False)  # (n_cls, 1, D)
        self.register_buffer("token_suffix", embedding[:, SOT_POSITIONS + self.n_ctx:].clone(),
                             persistent=False)  # (n_cls, 77 - 1 - n_ctx, D)
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)  # (n_cls, 77)
        index = layout_index(self.name_lens, self.n_ctx, tokenized.shape[1], self.class_token_position)
        self.register_buffer("layout", index, persistent=False)  # (n_cls, 77)
        # Positions after the last EOT of any class never reach a text feature (causal attention).
        self.eot_seq_len = int(tokenized.argmax(dim=-1).max()) + 1

    def expand_ctx(self, ctx: Optional[Tensor] = None) -> Tensor:
        """Generic ``(n_ctx, D)`` or class-specific ``(n_cls, n_ctx, D)`` context -> ``(n_cls, n_ctx, D)``."""
        ctx = self.ctx if ctx is None else ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)  # (n_cls, n_ctx, D)
        return ctx

    def construct_prompts(self, ctx: Tensor, seq_len: Optional[int] = None) -> Tensor:
        """Assemble prompts from a per-class context.

        Args:
            ctx: ``(..., n_cls, n_ctx, D)``; leading dims (e.g. CoCoOp's image batch) are kept.
            seq_len: keep only the first ``seq_len`` positions (``>= self.eot_seq_len``); ``None`` keeps 77.

        Returns:
            Prompt embeddings ``(..., n_cls, seq_len or 77, D)`` with the class tokens at
            ``class_token_position``.
        """
        lead = ctx.shape[:-3]
        prefix = self.token_prefix.expand(*lead, -1, -1, -1)  # (..., n_cls, 1, D)
        suffix = self.token_suffix
        if seq_len is not None:
            if seq_len < self.eot_seq_len:
                raise ValueError(f"seq_len={seq_len} would cut an EOT; it must be >= {self.eot_seq_len}")
            suffix = suffix[:, :seq_len - SOT_POSITIONS - self.n_ctx]  # (n_cls, seq_len - 1 - n_ctx, D)
        suffix = suffix.expand(*lead, -1, -1, -1)  # (..., n_cls, S, D)
        prompts = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=-2)  # (..., n_cls, L, D)
        if self.class_token_position == "end":
            return prompts
        length = prompts.shape[-2]
        index = self.layout[:, :length]  # (n_cls, L): a permutation of 0..L-1 for L >= eot_seq_len
        index = index.expand(*lead, -1, -1).unsqueeze(-1).expand(*prompts.shape)  # (..., n_cls, L, D)
        return torch.gather(prompts, -2, index)  # (..., n_cls, L, D)

    def forward(self) -> Tensor:
        """CoOp's prompts for every class: ``(n_cls, 77, D)``."""
        return self.construct_prompts(self.expand_ctx())
