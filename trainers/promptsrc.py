"""PromptSRC: deep vision-language prompts regularised towards frozen CLIP, averaged over epochs.

Khattak, Wasim, Naseer, Khan, Yang, Khan, "Self-regulating Prompts: Foundational Model Adaptation without
Forgetting", ICCV 2023, arXiv:2307.06948.  Reference implementation: muzairkhattak/PromptSRC@bb95c77
(``trainers/promptsrc.py``, ``train.py``'s ``extend_cfg``, ``configs/trainers/PromptSRC/``).

The prompts are IVLP's (``trainers/maple/``): independent learned tokens in both of CLIP's towers, at layer 0
and replaced before each of the next layers up to the prompt depth.  Three self-regulating terms keep the
prompted model close to the frozen one while the cross-entropy fits the few shots: an L1 distance between the
prompted and the frozen class text features (the frozen ones averaged over 60 hand-written templates, for
textual diversity), an L1 distance between the prompted and the frozen image features, and a KL divergence
from the frozen zero-shot logits to the prompted ones.  After every epoch the prompts are added to a running
sum with a weight from a Gaussian over the epoch index (Gaussian prompt aggregation, GPA); after the last epoch
the prompts become that weighted average, which is what is tested and saved.  Formulas, defaults and the
differences from the reference: docs/methods/promptsrc.md.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import broadcast_object, is_main_process, progress
from vlprompt import clip

from .common.custom_clip import cosine_logits, l2_normalize
from .common.templates import IMAGENET_TEMPLATES
from .common.text_encoder import TextEncoder
from .maple import DeepPromptCLIP, DeepPromptTrainer, IVLPPromptLearner, PromptSet

logger = logging.getLogger(__name__)

__all__ = ["PROMPTSRC_TEMPLATES", "PromptSRC", "PromptSRCCLIP", "PromptSRCOutput", "GaussianPromptAggregate",
           "gaussian_epoch_weights", "text_consistency_loss", "image_consistency_loss", "logit_consistency_loss",
           "frozen_text_features"]

# The templates whose frozen text features are averaged: the reference's list (its trainers/imagenet_templates.py)
# is the first 60 of OpenAI's 80 ImageNet templates, with "a photo of a {}." moved to the front.
PROMPTSRC_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",) + tuple(
    t for t in IMAGENET_TEMPLATES[:60] if t != "a photo of a {}.")
# Prefix of the frozen image tower the reference keeps inside its prompt learner (dropped from its checkpoints).
REFERENCE_TEACHER_PREFIX = "ZS_image_encoder."
# Class prompts encoded per text-tower call when the frozen features are computed.
TEXT_BATCH = 1000


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.PROMPTSRC = CN()
    # Prompt tokens per image-tower layer; 0 (with PROMPT_DEPTH_VISION 0) = no image prompts
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4
    # Prompt tokens per text-tower layer
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4
    # Phrase whose first N_CTX_TEXT tokens initialise the text context (the rest stays in the template);
    # "" or a shorter phrase = random N(0, INIT_STD^2) context behind "X" placeholders
    cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"
    # fp16 (the reference: CLIP in half precision), fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    cfg.TRAINER.PROMPTSRC.PREC = "fp16"
    # Image prompt depth J_v: prompts at image layers 0 .. J_v-1; 0 = no image prompts (with N_CTX_VISION 0)
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9
    # Text prompt depth J_t >= 1: prompts at text layers 0 .. J_t-1
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9
    # Weight lambda_text of the L1 distance between prompted and frozen class text features
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25.0
    # Weight lambda_image of the L1 distance between prompted and frozen image features
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10.0
    # Weight lambda_logits of the KL divergence from the frozen zero-shot logits to the prompted ones (new key;
    # the reference hard-codes 1)
    cfg.TRAINER.PROMPTSRC.LOGIT_LOSS_WEIGHT = 1.0
    # Gaussian prompt aggregation: True = the prompts after the last epoch are sum_e w_e * prompts_e; False =
    # the last epoch's prompts (new key; the reference always aggregates)
    cfg.TRAINER.PROMPTSRC.GPA = True
    # Mean of the Gaussian over the epoch index 1..MAX_EPOCH that weights each epoch's prompts
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15.0
    # Standard deviation of that Gaussian (> 0)
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1.0
    # Std of the random prompts (the reference hard-codes 0.02)
    cfg.TRAINER.PROMPTSRC.INIT_STD = 0.02
    # True keeps every prompt in fp32 under PREC fp16 (cast where it meets CLIP); False is the reference's
    # recipe: the text context is an fp16 parameter updated (and aggregated) in fp16, the other prompts fp32
    cfg.TRAINER.PROMPTSRC.FP32_MASTER_WEIGHTS = True
    # True rounds the prompt tokens (all but the text context) to fp16 values before they enter a tower, as the
    # reference's hard-coded .half() does; only changes PREC fp32 runs
    cfg.TRAINER.PROMPTSRC.ROUND_PROMPTS_TO_FP16 = False


# ---------------------------------------------------------------------------------------------- the losses
def text_consistency_loss(text_features: Tensor, frozen_text_features: Tensor) -> Tensor:
    """``L_SCL-text = mean_{c,d} |g~_cd - g_cd|`` over the normalised class features ``(C, E)``, in fp32."""
    return F.l1_loss(text_features.float(), frozen_text_features.float())


def image_consistency_loss(image_features: Tensor, frozen_image_features: Tensor) -> Tensor:
    """``L_SCL-image = mean_{b,d} |f~_bd - f_bd|`` over the normalised image features ``(B, E)``, in fp32."""
    return F.l1_loss(image_features.float(), frozen_image_features.float())


def logit_consistency_loss(logits: Tensor, frozen_logits: Tensor) -> Tensor:
    """``L_SCL-logits = (1 / (B C)) sum_{b,c} q_bc (log q_bc - log p_bc)``, in fp32.

    ``p = softmax(logits)`` of the prompted model and ``q = softmax(frozen_logits)`` of frozen CLIP, both ``(B, C)``:
    KL(q || p) summed over the batch and divided by the number of logits, the reference's form (its
    ``F.kl_div(..., reduction="sum", log_target=True) / logits.numel()`` at temperature 1).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    log_q = F.log_softmax(frozen_logits.float(), dim=1)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()


# ---------------------------------------------------------------------------------------------- GPA
def gaussian_epoch_weights(n_epochs: int, mean: float, std: float) -> list[float]:
    """``w_e = N(e; mean, std^2) / sum_{a=1..n} N(a; mean, std^2)`` for the epochs ``e = 1 .. n``.

    Computed from log densities shifted by their maximum, so a mean far outside ``1 .. n`` still gives weights
    (the plain densities would underflow to 0 / 0).
    """
    log_density = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, n_epochs + 1)]
    top = max(log_density)
    density = [math.exp(value - top) for value in log_density]
    total = sum(density)
    return [value / total for value in density]


class GaussianPromptAggregate(nn.Module):
    """Running ``sum_{e <= k} w_e * theta_e`` of a module's parameters after its epochs ``1 .. k``.

    Buffers, so the sum is checkpointed with the run and a resumed run continues it bit for bit: one per
    parameter of the prompt learner, under the parameter's own name and in its dtype (the reference sums each
    tensor in its dtype), and ``epochs_added`` = ``k``.  The weights come from the config, not the checkpoint.
    """

    def __init__(self, module: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.weights = tuple(weights)
        self.names = [name for name, _ in module.named_parameters()]
        for name, param in module.named_parameters():
            self._register_nested_buffer(name, torch.zeros_like(param, requires_grad=False))
        self.register_buffer("epochs_added", torch.zeros((), dtype=torch.long))

    def _register_nested_buffer(self, name: str, value: Tensor) -> None:
        """Register ``value`` at the dotted ``name`` (``deep_text_prompts.0``), creating empty parent modules."""
        owner: nn.Module = self
        *parents, leaf = name.split(".")
        for part in parents:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        owner.register_buffer(leaf, value)

    def weighted_sum(self) -> dict[str, Tensor]:
        """The current sum, by parameter name."""
        return {name: self.get_buffer(name) for name in self.names}

    @torch.no_grad()
    def add(self, module: nn.Module, epoch: int) -> None:
        """Add ``w_{epoch+1} * theta`` (``epoch`` 0-based) once; an epoch already in the sum is skipped."""
        if epoch < int(self.epochs_added):
            return
        if epoch != int(self.epochs_added):
            raise RuntimeError(f"Gaussian prompt aggregation holds epochs 1..{int(self.epochs_added)} but epoch "
                               f"{epoch + 1} ended; resume from the run's own checkpoints (same --output-dir)")
        weight = self.weights[epoch]
        for name, param in module.named_parameters():
            self.get_buffer(name).add_(param.detach() * weight)
        self.epochs_added.fill_(epoch + 1)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Replace the module's parameters by the weighted sum."""
        for name, param in module.named_parameters():
            param.copy_(self.get_buffer(name))


# ---------------------------------------------------------------------------------------------- frozen CLIP
@torch.no_grad()
def frozen_text_features(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                         device: torch.device, truncate_at_eot: bool = True) -> Tensor:
    """Frozen CLIP's class features ``(n_cls, E)``: each template's features averaged, then L2-normalised.

    As the reference, the un-normalised features are averaged and the text tower runs in fp32 (a copy of it,
    on ``device``, whatever the run's precision).  ``_`` in class names reads as a space.
    """
    encoder = copy.deepcopy(TextEncoder(clip_model, truncate_at_eot=truncate_at_eot)).float().to(device)
    token_embedding = clip_model.token_embedding
    names = [name.replace("_", " ") for name in classnames]
    total = None
    for template in progress(templates, "PromptSRC frozen text features"):
        tokens = clip.tokenize([template.format(name) for name in names]).long()  # (n_cls, 77)
        features = []
        for start in range(0, len(names), TEXT_BATCH):
            chunk = tokens[start:start + TEXT_BATCH]
            embeddings = token_embedding(chunk.to(token_embedding.weight.device)).float().to(device)  # (n, 77, D)
            features.append(encoder(embeddings, chunk.to(device)))
        features = torch.cat(features)  # (n_cls, E)
        total = features if total is None else total + features
    return l2_normalize(total / len(templates)).cpu()  # (n_cls, E)


class PromptSRCOutput(NamedTuple):
    """What one training forward gives the losses (features L2-normalised)."""

    logits: Tensor  # (B, C) prompted
    text_features: Tensor  # (C, E) prompted
    image_features: Tensor  # (B, E) prompted
    frozen_text_features: Tensor  # (C, E) frozen CLIP, template average
    frozen_image_features: Optional[Tensor]  # (B, E) frozen CLIP; None when no loss needs it
    frozen_logits: Optional[Tensor]  # (B, C) frozen zero-shot logits; None when no loss needs it


class PromptSRCCLIP(DeepPromptCLIP):
    """IVLP's model plus frozen CLIP's class text features; ``forward`` gives the prompted logits (evaluation)."""

    def __init__(self, prompt_learner: IVLPPromptLearner, text_encoder: TextEncoder, clip_model: nn.Module,
                 frozen_text: Tensor, round_prompts_to_fp16: bool = False) -> None:
        super().__init__(prompt_learner, text_encoder, clip_model, round_prompts_to_fp16=round_prompts_to_fp16)
        self.register_buffer("frozen_text", frozen_text, persistent=False)  # (n_cls, E), fp32, normalised

    def forward_with_frozen(self, image: Tensor, with_frozen_image: bool = True) -> PromptSRCOutput:
        """Prompted logits and features, with frozen CLIP's (no gradient) for the self-regulating terms."""
        prompts, text_features = self.current_prompts()
        image_features = self.encode_image(image, prompts)
        logits = cosine_logits(image_features, text_features, self.logit_scale)  # (B, C), as IVLP's forward
        frozen_image = frozen_logits = None
        if with_frozen_image:
            with torch.no_grad():
                frozen_image = self.encode_image(image, PromptSet())  # no visual prompts: the plain tower
                frozen_logits = cosine_logits(frozen_image, self.frozen_text.to(frozen_image.dtype),
                                              self.logit_scale)  # (B, C)
        return PromptSRCOutput(logits, text_features, image_features, self.frozen_text, frozen_image, frozen_logits)


@TRAINER_REGISTRY.register()
class PromptSRC(DeepPromptTrainer):
    """Prompting with Self-Regulating Constraints (PromptSRC) on IVLP's deep prompts.

    "Self-regulating Prompts: Foundational Model Adaptation without Forgetting", https://arxiv.org/abs/2307.06948
    """

    REFERENCE_MODEL_NAME = "VLPromptLearner"  # the reference's checkpoint folder in a run directory
    GPA_MODEL_NAME = "gpa"  # registered model (checkpoint folder) holding the running weighted sum

    aggregate: Optional[GaussianPromptAggregate] = None

    # ------------------------------------------------------------------ config
    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.PROMPTSRC
        if node.N_CTX_TEXT < 1 or node.PROMPT_DEPTH_TEXT < 1:
            raise ValueError(f"TRAINER.PROMPTSRC.N_CTX_TEXT={node.N_CTX_TEXT} / PROMPT_DEPTH_TEXT="
                             f"{node.PROMPT_DEPTH_TEXT}; both must be >= 1")
        if (node.N_CTX_VISION == 0) != (node.PROMPT_DEPTH_VISION == 0) or min(node.N_CTX_VISION,
                                                                                node.PROMPT_DEPTH_VISION) < 0:
            raise ValueError(f"TRAINER.PROMPTSRC.N_CTX_VISION={node.N_CTX_VISION} / PROMPT_DEPTH_VISION="
                             f"{node.PROMPT_DEPTH_VISION}; set both to 0 (no image prompts) or both >= 1")
        for key in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "LOGIT_LOSS_WEIGHT"):
            if node[key] < 0:
                raise ValueError(f"TRAINER.PROMPTSRC.{key}={node[key]}; it must be >= 0 (0 turns the term off)")
        if node.GPA_STD <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD={node.GPA_STD}; it must be > 0")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC.INIT_STD={node.INIT_STD}; it must be > 0")
        if node.PROMPT_DEPTH_VISION > 0:
            self.check_vit_backbone(cfg, "PromptSRC's image prompts (TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION > 0)")
        super().check_cfg(cfg)

    def reference_half_parameters(self) -> Sequence[str]:
        return () if self.cfg.TRAINER.PROMPTSRC.FP32_MASTER_WEIGHTS else ("ctx",)

    # ------------------------------------------------------------------ model
    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.PROMPTSRC
        self.check_depth("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", node.PROMPT_DEPTH_TEXT,
                         clip_model.transformer.layers, "text")
        if node.PROMPT_DEPTH_VISION > 0:
            self.check_image_tower(clip_model, "PromptSRC's image prompts (TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION > 0)")
            self.check_depth("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION,
                             clip_model.visual.transformer.layers, "image")
        learner = IVLPPromptLearner(classnames, clip_model, node.N_CTX_TEXT, node.PROMPT_DEPTH_TEXT,
                                    node.N_CTX_VISION, node.PROMPT_DEPTH_VISION, ctx_init=node.CTX_INIT,
                                    init_std=node.INIT_STD)
        frozen = None
        if is_main_process():  # under torchrun rank 0 encodes and every rank gets the same tensor
            logger.info(f"Frozen CLIP text features: {len(PROMPTSRC_TEMPLATES)} templates x {len(classnames)} "
                        "classes, averaged")
            frozen = frozen_text_features(clip_model, classnames, PROMPTSRC_TEMPLATES, self.device,
                                          truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        frozen = broadcast_object(frozen)
        return PromptSRCCLIP(learner, self.make_text_encoder(clip_model), clip_model, frozen,
                             round_prompts_to_fp16=node.ROUND_PROMPTS_TO_FP16)

    # ------------------------------------------------------------------ training step
    def forward_train(self, image: Tensor, label: Tensor) -> PromptSRCOutput:
        node = self.cfg.TRAINER.PROMPTSRC
        needs_frozen_image = node.IMAGE_LOSS_WEIGHT > 0 or node.LOGIT_LOSS_WEIGHT > 0
        return self.model.forward_with_frozen(image, with_frozen_image=needs_frozen_image)

    def regulating_terms(self, output: PromptSRCOutput) -> dict[str, Tensor]:
        """The weighted self-regulating terms that are switched on (weight > 0), by name."""
        node = self.cfg.TRAINER.PROMPTSRC
        terms = {}
        if node.TEXT_LOSS_WEIGHT > 0:
            terms["text"] = node.TEXT_LOSS_WEIGHT * text_consistency_loss(output.text_features,
                                                                          output.frozen_text_features)
        if node.IMAGE_LOSS_WEIGHT > 0:
            terms["image"] = node.IMAGE_LOSS_WEIGHT * image_consistency_loss(output.image_features,
                                                                             output.frozen_image_features)
        if node.LOGIT_LOSS_WEIGHT > 0:
            terms["logits"] = node.LOGIT_LOSS_WEIGHT * logit_consistency_loss(output.logits, output.frozen_logits)
        return terms

    def compute_loss(self, output: PromptSRCOutput, label: Tensor) -> Tensor:
        """``L = CE + lambda_text L_text + lambda_image L_image + lambda_logits L_logits`` (weight-0 terms skipped)."""
        loss = super().compute_loss(output.logits, label)
        for term in self.regulating_terms(output).values():
            loss = loss + term
        return loss

    def loss_summary(self, output: PromptSRCOutput, label: Tensor, loss: Tensor) -> dict[str, float]:
        return super().loss_summary(output.logits, label, loss)

    # ------------------------------------------------------------------ Gaussian prompt aggregation
    def before_train(self) -> None:
        """Register the running weighted sum (training only: an evaluation loads the prompts alone), then resume."""
        node = self.cfg.TRAINER.PROMPTSRC
        if node.GPA and self.aggregate is None:
            weights = gaussian_epoch_weights(self.max_epoch, node.GPA_MEAN, node.GPA_STD)
            self.aggregate = GaussianPromptAggregate(self.model.prompt_learner, weights).to(self.device)
            self.register_model(self.GPA_MODEL_NAME, self.aggregate)
            logger.info("Gaussian prompt aggregation: epoch weights " + " ".join(f"{w:.4g}" for w in weights))
        super().before_train()

    def end_of_epoch(self) -> None:
        """Add this epoch's prompts to the weighted sum; after the last epoch the prompts become the sum."""
        super().end_of_epoch()
        if self.aggregate is None:
            return
        learner = self.model.prompt_learner
        self.aggregate.add(learner, self.epoch)
        if self.epoch + 1 == self.max_epoch:
            self.aggregate.copy_to(learner)
            logger.info(f"Gaussian prompt aggregation: the prompts are now the weighted average of epochs "
                        f"1..{self.max_epoch} (tested and saved)")

    # ------------------------------------------------------------------ checkpoints
    def drop_frozen_buffers(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Also drop the frozen image tower that the reference's checkpoints keep inside the prompt learner."""
        kept = super().drop_frozen_buffers(state_dict)
        return {k: v for k, v in kept.items() if not k.startswith(REFERENCE_TEACHER_PREFIX)}
