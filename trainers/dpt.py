"""DPT: Discrete Prompt Tuning — one real vocabulary token per prompt position, plus a shared visual prompt.

Taboada Warmerdam, Meijer, Komen, de Redelijkheid, Du, "Discrete Prompt Tuning for Vision-Language Models"
(FOMO project paper; no arXiv id).  Reference: ``alvitawa/fomo@8837028`` (a CoPrompt fork, ``trainers/coprompt.py``
with ``GetToggle``/``EmbeddingsToggler``).  Spec: ``shared/specs/dpt.md``.

A score matrix ``S (n_ctx, 49408)`` selects one token per position (BOS/EOS skipped, decode -> encode must give the
ids back), the context embeddings are CLIP's rows for those ids and the gradient reaches ``S`` straight through
the one-hot selection (``trainers/common/discrete_prompt.py``).  Text prompt: ``[SOT] <tokens> <rest of CTX_INIT>
name . [EOT]``; image side: ``proj = Linear(text width -> ViT width)`` of the same embeddings, appended after the
ViT patch tokens (``SHARED_VISUAL``).  Only ``S`` and ``proj`` are trained, with cross-entropy.

Deviations from the reference, with their literal switches where one can exist (spec section in brackets):
- hyperparameters are config keys (``TRAINER.DPT.*``, ``OPTIM.*``), not the env vars NUM_CONTEXT, MAX_EPOCH,
  MOMENTUM, WEIGHT_STD, NOFILTER, NOSELECT, NOSHARED, DIR [§2.3, §5.3]; per-dataset best settings are presets
  ``configs/trainers/DPT/vit_b16_best_<dataset>.yaml`` [§3.2];
- ``SELECT_MODE reference`` keeps the reference's repair order (rank used as token id, largest gap first) and
  ``paper`` is Algorithm 1 (smallest gap first) [§5.1]; both stop after ``MAX_SELECT_ITERS`` iterations with a
  safe-token fallback (the reference can run past the vocabulary; a huge value is the literal behaviour) [§4.3];
  ties are broken by (score desc, id asc) with stable sorts, where the reference's unstable argsort left them to
  the kernel (no literal switch: that order is not reproducible) [§4.4];
- exact speed-ups, same selections and gradients: stable top-``TOPK`` instead of a full sort, a memoised
  round-trip check, batched repair trials, and ``E[ids]`` instead of ``one_hot @ E`` (``DENSE_ONEHOT`` is the
  literal matmul) [§1.5];
- ``S`` is kept in fp32 under fp16 (``FP32_SCORES``; ``False`` = the reference's fp16 scores) [§4.5];
- the visual prompt is cast to the activation dtype, not ``.half()`` (identical under fp16, where the reference
  ran; its cast breaks fp32/amp, so there is no literal switch) [§5.8];
- the CoPrompt distillation forward (frozen CLIP on a 2nd view, GPT prompts), adapters and the unused continuous
  ``ctx`` are gone: their outputs never reached the loss, so ``TRAINER.W``/``DISTILL`` have no counterpart [§2.2,
  §5.2, §5.9]; use ``DATALOADER.K_TRANSFORMS 1`` (the 2nd view only fed that dead branch);
- the class text features are computed once per evaluation, not per test batch; the prompt is logged each epoch
  (log.txt, tensorboard text ``train/prompt``) and saved as ``<run>/prompt_learner/prompt-<epoch>.json`` [§1.5];
- the partial template replacement is kept (``TEMPLATE partial``: with ``CTX_INIT "a photo of a"`` and
  ``N_CTX 1`` the prompt is "<t1> photo of a {}.") and ``TEMPLATE pure`` uses "X" placeholders [§5.7]; partial
  applies when ``N_CTX`` <= the token count of ``CTX_INIT`` (the reference hard-codes 4, that count for its default).
"""
from __future__ import annotations

import json
import logging
import os.path as osp
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from vlprompt import clip
from vlprompt.clip.model import VisionTransformer
from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import is_main_process

from .common.discrete_prompt import SELECT_MODES, DiscretePrompt, RoundTripOracle, default_oracle
from .common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from .common.prompt_learner import PLACEHOLDER, PromptLearnerBase
from .common.prompt_trainer import ClipPromptTrainer
from .common.text_encoder import TextEncoder

logger = logging.getLogger(__name__)

TEMPLATES = ("partial", "pure")
INIT_MODES = ("normal", "spike")


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.DPT = CN()
    # Prompt positions n_ctx (tokens, not words); the reference's env NUM_CONTEXT (default 4)
    cfg.TRAINER.DPT.N_CTX = 4
    # Template whose first N_CTX tokens the learned tokens replace (TEMPLATE partial); "" = "X" placeholders
    cfg.TRAINER.DPT.CTX_INIT = "a photo of a"
    # partial: "<tokens> <rest of CTX_INIT> {name}." (reference, used when N_CTX <= tokens of CTX_INIT);
    # pure: "<tokens> {name}." whatever CTX_INIT says
    cfg.TRAINER.DPT.TEMPLATE = "partial"
    # fp16 (reference: CLIP and proj in half precision), fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    cfg.TRAINER.DPT.PREC = "fp16"
    # Score init: normal = N(0, INIT_STD^2) (every reference experiment); spike = zeros + INIT_VALUE at INIT_WORDS
    cfg.TRAINER.DPT.INIT = "normal"
    # Std of the normal score init; the reference's env WEIGHT_STD (default 0.004; grid 0.001/0.012/0.08)
    cfg.TRAINER.DPT.INIT_STD = 0.004
    # Spike init: words whose N_CTX BPE ids get INIT_VALUE; "" = the first N_CTX tokens of CTX_INIT
    cfg.TRAINER.DPT.INIT_WORDS = ""
    # Spike init: score at the spike ids (all other scores 0)
    cfg.TRAINER.DPT.INIT_VALUE = 0.001
    # Skip BOS/EOS when selecting (False together with ROUNDTRIP False = the reference's NOFILTER ablation)
    cfg.TRAINER.DPT.FILTER_SPECIAL = True
    # Require decode -> encode to give the selected ids back (False = the reference's NOSELECT ablation)
    cfg.TRAINER.DPT.ROUNDTRIP = True
    # Repair order on a failed round trip: reference (the reference code, spec §1.3) or paper (Algorithm 1)
    cfg.TRAINER.DPT.SELECT_MODE = "reference"
    # Selection iterations before falling back to the best safe tokens (spec §4.3)
    cfg.TRAINER.DPT.MAX_SELECT_ITERS = 1000
    # Candidates ranked per position before a full vocabulary sort is needed (exact either way; speed only)
    cfg.TRAINER.DPT.TOPK = 256
    # Append Linear(ctx) to the ViT tokens as a shared visual prompt (False = the reference's NOSHARED ablation)
    cfg.TRAINER.DPT.SHARED_VISUAL = True
    # Keep the score matrix in fp32 under PREC fp16 (False = the reference's fp16 scores, spec §4.5)
    cfg.TRAINER.DPT.FP32_SCORES = True
    # Literal one-hot (n_ctx x V) @ E in the forward (reference); False gathers E[ids] (same values and gradient)
    cfg.TRAINER.DPT.DENSE_ONEHOT = False


def template_parts(ctx_init: str, n_ctx: int, template: str) -> tuple[str, list[int]]:
    """The class-prompt prefix string and the template ids that stay after the learned tokens."""
    words = ctx_init.replace("_", " ").strip()
    if template == "partial" and words:
        ids = clip.encode(words)
        if n_ctx <= len(ids):
            return words, ids[n_ctx:]
        logger.info(f"N_CTX={n_ctx} > {len(ids)} tokens of CTX_INIT {words!r}: using {PLACEHOLDER!r} placeholders")
    return " ".join([PLACEHOLDER] * n_ctx), []


def spike_ids(node) -> list[int]:
    """Token ids of the spike init: INIT_WORDS (exactly N_CTX tokens) or the first N_CTX tokens of CTX_INIT."""
    if node.INIT_WORDS:
        return clip.encode(node.INIT_WORDS.replace("_", " "))
    return clip.encode(node.CTX_INIT.replace("_", " "))[:node.N_CTX]


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
        nn.Module.__init__(self)  # not PromptLearnerBase.__init__: it builds CoOp's continuous ctx (unused, §5.9)
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


@TRAINER_REGISTRY.register()
class DPT(ClipPromptTrainer):
    """Discrete Prompt Tuning (DPT).

    "Discrete Prompt Tuning for Vision-Language Models", https://github.com/alvitawa/fomo
    """

    LEARNABLE = ("prompt_learner",)

    def fp32_master_weights(self) -> bool:
        """DPT's own recipe (spec §4.5): CLIP's dtype for the module, the scores kept fp32 by ``FP32_SCORES``."""
        return False

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.DPT
        if node.N_CTX < 1:
            raise ValueError(f"TRAINER.DPT.N_CTX={node.N_CTX}; use at least 1 prompt token")
        for key, value, choices in (("TEMPLATE", node.TEMPLATE, TEMPLATES), ("INIT", node.INIT, INIT_MODES),
                                    ("SELECT_MODE", node.SELECT_MODE, SELECT_MODES)):
            if value not in choices:
                raise ValueError(f"TRAINER.DPT.{key}={value!r}; choose one of {', '.join(choices)}")
        if node.INIT == "normal" and node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.DPT.INIT_STD={node.INIT_STD}; it must be > 0")
        if node.INIT == "spike" and len(spike_ids(node)) != node.N_CTX:
            raise ValueError(f"TRAINER.DPT.INIT spike needs {node.N_CTX} tokens but INIT_WORDS/CTX_INIT give "
                             f"{spike_ids(node)}; set INIT_WORDS to {node.N_CTX} tokens")
        if node.MAX_SELECT_ITERS < 1 or node.TOPK < 2:
            raise ValueError(f"TRAINER.DPT.MAX_SELECT_ITERS={node.MAX_SELECT_ITERS} / TOPK={node.TOPK}; "
                             "use MAX_SELECT_ITERS >= 1 and TOPK >= 2")
        backbone = clip.backbone_info(cfg.MODEL.BACKBONE.NAME)
        if node.SHARED_VISUAL and backbone is not None and backbone.is_resnet:
            raise ValueError(f"TRAINER.DPT.SHARED_VISUAL needs a ViT but MODEL.BACKBONE.NAME="
                             f"{cfg.MODEL.BACKBONE.NAME}; use a ViT or set TRAINER.DPT.SHARED_VISUAL False")
        if cfg.DATALOADER.K_TRANSFORMS != 1:
            raise ValueError(f"DATALOADER.K_TRANSFORMS={cfg.DATALOADER.K_TRANSFORMS}; DPT trains on one view, "
                             "set it to 1 (the reference's 2nd view fed a discarded loss, spec §2.2)")
        super().check_cfg(cfg)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.DPT
        visual = clip_model.visual
        if node.SHARED_VISUAL and not isinstance(visual, VisionTransformer):
            raise ValueError(f"TRAINER.DPT.SHARED_VISUAL needs a ViT image tower, {self.cfg.MODEL.BACKBONE.NAME} "
                             f"has a {type(visual).__name__}; set TRAINER.DPT.SHARED_VISUAL False")
        emb_toggler = DiscretePrompt(
            node.N_CTX, clip_model.token_embedding.num_embeddings, init_std=node.INIT_STD,
            init_ids=spike_ids(node) if node.INIT == "spike" else None, init_value=node.INIT_VALUE,
            select_mode=node.SELECT_MODE, filter_special=node.FILTER_SPECIAL, roundtrip=node.ROUNDTRIP,
            max_iters=node.MAX_SELECT_ITERS, topk=node.TOPK, keep_fp32=node.FP32_SCORES,
            dense_onehot=node.DENSE_ONEHOT, oracle=default_oracle(),
        )
        # proj exists even when SHARED_VISUAL is off, so one checkpoint serves both settings (reference NOSHARED).
        visual_width = visual.conv1.out_channels if isinstance(visual, VisionTransformer) else None
        learner = DPTPromptLearner(classnames, clip_model, emb_toggler, ctx_init=node.CTX_INIT,
                                   template=node.TEMPLATE, visual_width=visual_width)
        self._prompt_changes = 0
        self._previous_ids: tuple[int, ...] = ()
        model = DPTCLIP(learner, self.make_text_encoder(clip_model), clip_model, shared_visual=node.SHARED_VISUAL)
        self.log_prompt("Initial DPT prompt", learner.describe())
        return model

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch) -> dict[str, float]:
        summary = super().forward_backward(batch)
        ids = self.model.last_ids
        if self._previous_ids and ids != self._previous_ids:
            self._prompt_changes += 1
            logger.debug(f"DPT prompt changed at epoch {self.epoch + 1} batch {self.batch_idx + 1}: {list(ids)}")
        self._previous_ids = ids
        return summary

    def end_of_epoch(self) -> None:
        record = self.model.prompt_learner.describe()
        fallbacks = self.model.prompt_learner.emb_toggler.fallbacks
        note = f" ({self._prompt_changes} changes during the epoch" + (
            f", {fallbacks} capped selections so far)" if fallbacks else ")")
        self.log_prompt(f"DPT prompt after epoch {self.epoch + 1}/{self.max_epoch}", record, note)
        self.write_scalar("train/prompt_changes", self._prompt_changes, self.epoch + 1)
        self.write_text("train/prompt", f'"{record["prompt"]}" -> "{record["template"]}"', self.epoch + 1)
        self._prompt_changes = 0

    def log_prompt(self, what: str, record: dict, note: str = "") -> None:
        logger.info(f'{what}: "{record["prompt"]}" -> "{record["template"]}" ids {record["ids"]}{note}')

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None,
                   model_name: str = "") -> None:
        """Dassl's checkpoint, plus the decoded prompt beside it: ``prompt_learner/prompt-<epoch>.json``."""
        super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)
        if not is_main_process():
            return
        record = {"epoch": epoch + 1, **self.model.prompt_learner.describe(),
                  "select_mode": self.cfg.TRAINER.DPT.SELECT_MODE}
        names = ["best"] if model_name.startswith("model-best") else [str(epoch + 1)] + (["best"] if is_best else [])
        for name in names:
            with open(osp.join(directory, "prompt_learner", f"prompt-{name}.json"), "w") as f:
                json.dump(record, f, indent=1)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        super().load_model(directory, epoch)
        if directory:
            self.log_prompt("Loaded DPT prompt", self.model.prompt_learner.describe())
