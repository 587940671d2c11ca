"""DPT: Discrete Prompt Tuning, one real vocabulary token per prompt position plus a shared visual prompt.

Taboada Warmerdam, Meijer, Komen, de Redelijkheid, Du, "Discrete Prompt Tuning for Vision-Language Models"
(FOMO project paper; no arXiv id).  Reference implementation: alvitawa/fomo@8837028 (a CoPrompt fork;
``trainers/coprompt.py`` with ``GetToggle`` and ``EmbeddingsToggler``).

A score matrix ``S (n_ctx, 49408)`` picks one token of CLIP's vocabulary per prompt position (BOS/EOS skipped,
and decode -> encode must give the same ids back); the context embeddings are CLIP's token-embedding rows of
those ids, and the gradient reaches ``S`` straight through the one-hot selection (``discrete_prompt.py``).  The
learned tokens replace the first ``N_CTX`` tokens of "a photo of a" in the class prompts, and a linear map of
the same embeddings is appended to the ViT's patch tokens as a shared visual prompt (``model.py``).  Only ``S``
and that linear map are trained, with cross-entropy.  What differs from the reference, the config switches that
restore its literal behaviour and the mapping of its environment variables: docs/methods/dpt.md.
"""
from __future__ import annotations

import json
import logging
import os.path as osp
from typing import Optional, Sequence

import torch
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt import clip
from vlprompt.clip.model import VisionTransformer
from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import all_gather_object, broadcast_object, is_distributed, is_main_process

from ..common.prompt_trainer import ClipPromptTrainer
from .discrete_prompt import SELECT_MODES, DiscretePrompt, default_oracle
from .model import TEMPLATES, DPTCLIP, DPTPromptLearner

logger = logging.getLogger(__name__)

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
    # Repair order after a failed round trip. reference: what the reference code does, reading each position's
    # "gap" at the columns numbered by the current rank (not the candidates' scores) and trying the largest
    # first; paper: the paper's Algorithm 1, the candidates' score gap, smallest first
    cfg.TRAINER.DPT.SELECT_MODE = "reference"
    # Selection iterations before falling back to the best safe tokens; the reference has no cap (a search
    # that never succeeds runs past the vocabulary and crashes)
    cfg.TRAINER.DPT.MAX_SELECT_ITERS = 1000
    # Candidates ranked per position before a full vocabulary sort is needed (exact either way; speed only)
    cfg.TRAINER.DPT.TOPK = 256
    # Append Linear(ctx) to the ViT tokens as a shared visual prompt (False = the reference's NOSHARED ablation)
    cfg.TRAINER.DPT.SHARED_VISUAL = True
    # Keep the score matrix in fp32 under PREC fp16; False = the reference, whose scores are fp16 parameters
    # updated without fp32 master weights (many small updates round away)
    cfg.TRAINER.DPT.FP32_SCORES = True
    # Literal one-hot (n_ctx x V) @ E in the forward (reference); False gathers E[ids] (same values and gradient)
    cfg.TRAINER.DPT.DENSE_ONEHOT = False


def spike_ids(node) -> list[int]:
    """Token ids of the spike init: INIT_WORDS (exactly N_CTX tokens) or the first N_CTX tokens of CTX_INIT."""
    if node.INIT_WORDS:
        return clip.encode(node.INIT_WORDS.replace("_", " "))
    return clip.encode(node.CTX_INIT.replace("_", " "))[:node.N_CTX]


@torch.no_grad()
def share_initial_parameters(module: nn.Module) -> None:
    """Under torchrun, give every rank rank 0's initial parameters.

    A run without ``--seed`` draws the scores and ``proj`` independently on each rank; averaged gradients keep
    equal parameters equal, so the ranks select the same tokens at every step only if they start equal.
    """
    if not is_distributed():
        return
    shared = broadcast_object({name: p.detach().cpu() for name, p in module.named_parameters()})
    for name, param in module.named_parameters():
        param.copy_(shared[name])


@TRAINER_REGISTRY.register()
class DPT(ClipPromptTrainer):
    """Discrete Prompt Tuning (DPT).

    "Discrete Prompt Tuning for Vision-Language Models", https://github.com/alvitawa/fomo
    """

    LEARNABLE = ("prompt_learner",)

    def fp32_master_weights(self) -> bool:
        """The reference's recipe: the learnable module in CLIP's dtype; ``FP32_SCORES`` keeps only S in fp32."""
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
                             "set it to 1 (the reference's second view only fed a loss it discarded)")
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
        share_initial_parameters(learner)
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
        self.check_same_prompt_on_all_ranks(record["ids"])
        fallbacks = self.model.prompt_learner.emb_toggler.fallbacks
        note = f" ({self._prompt_changes} changes during the epoch" + (
            f", {fallbacks} capped selections so far)" if fallbacks else ")")
        self.log_prompt(f"DPT prompt after epoch {self.epoch + 1}/{self.max_epoch}", record, note)
        self.write_scalar("train/prompt_changes", self._prompt_changes, self.epoch + 1)
        self.write_text("train/prompt", f'"{record["prompt"]}" -> "{record["template"]}"', self.epoch + 1)
        self._prompt_changes = 0

    def check_same_prompt_on_all_ranks(self, ids: Sequence[int]) -> None:
        """Under torchrun, fail loudly if the ranks' selections ever disagree (their scores must stay equal)."""
        if not is_distributed():
            return
        per_rank = all_gather_object(list(ids))
        if any(other != per_rank[0] for other in per_rank):
            raise RuntimeError(f"DPT ranks selected different prompts after epoch {self.epoch + 1}: {per_rank}; "
                               "their scores diverged (gradients must be averaged over every rank)")

    def log_prompt(self, what: str, record: dict, note: str = "") -> None:
        logger.info(f'{what}: "{record["prompt"]}" -> "{record["template"]}" ids {record["ids"]}{note}')

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None,
                   model_name: str = "") -> None:
        """Dassl's checkpoint, plus the decoded prompt beside it: ``prompt_learner/prompt-<epoch>.json``."""
        super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)
        if not is_main_process():  # one writer under torchrun; every rank selects the same prompt
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
