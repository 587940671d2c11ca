"""KgCoOp: Knowledge-guided Context Optimization — CoOp whose class text features stay near CLIP's hand-written ones.

Yao, Zhang, Xu, "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023,
arXiv:2303.13283.  Reference implementation: htyao89/KgCoOp@c43ccc3 ``KgCoOp/trainers/kgcoop.py``.

The prompt and the logits are CoOp's (a learned context before the class name, CLIP's scaled cosine
similarities).  Before training, CLIP's frozen text tower encodes one hand-written prompt per class (the
dataset's template, e.g. "a photo of a {}, a type of flower."); these normalised features ``w_clip`` are fixed.
Training adds to the cross-entropy ``W`` times one minus the mean, over the classes, of the cosine similarity
between each learned class feature and its hand-written one, so the context cannot drift far from the general
knowledge that makes CLIP work on classes it was not trained on.  Only the context is learned; the checkpoint
is CoOp's.  Differences from the reference and how to restore its literal behaviour: docs/methods/kgcoop.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.custom_clip import cosine_logits
from .common.prompt_clip import PromptCLIP
from .common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase, coop_prompt_keys
from .common.prompt_trainer import ClipPromptTrainer
from .common.templates import dataset_template
from .common.text_encoder import TextEncoder
from .common.text_features import class_text_features

logger = logging.getLogger(__name__)

# KgCoOp's hand-written prompts where they differ from the dataset class's TEMPLATE (CoOp's table): the
# reference's CUSTOM_TEMPLATES (htyao89/KgCoOp@c43ccc3 KgCoOp/trainers/kgcoop.py) gives DTD a different sentence.
KGCOOP_TEMPLATES = {"DescribableTextures": "a photo of a {}, a type of texture."}
# eps of the reference's torch.nn.CosineSimilarity (a floor on the product of the two norms)
COSINE_EPS = 1e-7


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.KGCOOP = coop_prompt_keys()  # CoOp's prompt keys (the reference always uses the class at the end)
    # Weight lambda of the knowledge-guided term (the paper's and every reference script's 8.0; the reference's
    # train.py default is 1.0, which its scripts always override); 0.0 trains CoOp
    cfg.TRAINER.KGCOOP.W = 8.0
    # Hand-written prompt whose text features anchor the learned ones ("{}" = class name); "" = KgCoOp's table:
    # the dataset's TEMPLATE, except DescribableTextures: "a photo of a {}, a type of texture."
    cfg.TRAINER.KGCOOP.TEMPLATE = ""


def knowledge_guided_loss(text_features: Tensor, clip_text_features: Tensor) -> Tensor:
    """``L_kg = 1 - (1/C) * sum_c cos(w_c, w_clip_c)`` for class features ``(C, E)``, in fp32.

    The reference's form (htyao89/KgCoOp ``CustomCLIP.forward``).  For unit vectors it is half the mean squared
    distance ``(1/C) * sum_c ||w_c - w_clip_c||^2`` that the paper writes for ``L_kg`` (arXiv:2303.13283), so the
    paper's formula with weight ``lambda`` is this term with weight ``2 * lambda``.
    """
    cos = F.cosine_similarity(text_features.float(), clip_text_features.float(), dim=-1, eps=COSINE_EPS)  # (C,)
    return 1.0 - cos.mean()


def hand_crafted_template(dataset_name: str, template: str = "") -> str:
    """``template`` if given, else KgCoOp's prompt for the dataset (its ``TEMPLATE`` unless listed above)."""
    if template:
        return template
    return KGCOOP_TEMPLATES.get(dataset_name) or dataset_template(dataset_name)


class KgCoOpCLIP(PromptCLIP):
    """CoOp's model plus the fixed hand-written class features ``clip_text_features`` ``(n_cls, E)``.

    The features are a non-persistent buffer of this model, not of the prompt learner: they are rebuilt for the
    current classes on every run and never enter a checkpoint, which therefore holds only ``ctx``, as CoOp's.
    """

    def __init__(self, prompt_learner: PromptLearnerBase, text_encoder: TextEncoder, clip_model: nn.Module,
                 clip_text_features: Tensor) -> None:
        super().__init__(prompt_learner, text_encoder, clip_model)
        self.register_buffer("clip_text_features", clip_text_features, persistent=False)  # (n_cls, E)

    def forward_with_text_features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, n_cls)`` and the normalised learned class features ``(n_cls, E)``, one text-tower pass."""
        text_features = self.encode_text()  # (n_cls, E)
        return cosine_logits(self.encode_image(image), text_features, self.logit_scale), text_features


@TRAINER_REGISTRY.register()
class KgCoOp(ClipPromptTrainer):
    """Knowledge-guided Context Optimization (KgCoOp).

    "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", https://arxiv.org/abs/2303.13283
    """


    LEARNABLE = ("prompt_learner",)
    EVAL_FROM_IMAGE_FEATURES = True  # only the text side is learned: test features are encoded once and cached
    # The reference's prompt learner also carries parameters it never uses or trains (a (1, 512) ``bias_vectors``
    # and a one-layer ``meta_net.linear1``); they are dropped when one of its checkpoints is loaded.
    FROZEN_BUFFERS = ClipPromptTrainer.FROZEN_BUFFERS + ("bias_vectors",)
    REFERENCE_UNUSED_KEYS = ("meta_net.linear1.weight", "meta_net.linear1.bias")

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.KGCOOP
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.KGCOOP.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}; "
                             f"choose one of {', '.join(CLASS_TOKEN_POSITIONS)}")
        if not node.CTX_INIT and node.N_CTX < 1:
            raise ValueError(f"TRAINER.KGCOOP.N_CTX={node.N_CTX}; use at least 1 context vector or set CTX_INIT")
        if node.INIT_STD <= 0:
            raise ValueError(f"TRAINER.KGCOOP.INIT_STD={node.INIT_STD}; it must be > 0")
        if node.W < 0:
            raise ValueError(f"TRAINER.KGCOOP.W={node.W}; the knowledge-guided weight must be >= 0 (0 = CoOp)")
        if node.TEMPLATE and node.TEMPLATE.count("{}") != 1:
            raise ValueError(f"TRAINER.KGCOOP.TEMPLATE={node.TEMPLATE!r}; it needs exactly one '{{}}' for the "
                             "class name, or '' for the dataset's prompt")
        super().check_cfg(cfg)

    def fp32_master_weights(self) -> bool:
        return self.cfg.TRAINER.KGCOOP.FP32_MASTER_WEIGHTS

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.KGCOOP
        prompt_learner = PromptLearnerBase(
            classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
            class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD,
        )
        template = hand_crafted_template(self.cfg.DATASET.NAME, node.TEMPLATE)
        logger.info(f"Hand-crafted prompts: {[template.format(name.replace('_', ' ')) for name in classnames]}")
        clip_model.to(self.device)  # the hand-written prompts are encoded once, on the run's device
        clip_text_features = class_text_features(clip_model, classnames, (template,),
                                                 truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        return KgCoOpCLIP(prompt_learner, self.make_text_encoder(clip_model), clip_model, clip_text_features)

    def forward_train(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_text_features(image)

    def compute_loss(self, output: tuple[Tensor, Tensor], label: Tensor) -> Tensor:
        """``cross_entropy(logits, y) + W * L_kg(w, w_clip)``; see ``knowledge_guided_loss``."""
        logits, text_features = output
        kg = knowledge_guided_loss(text_features, self.model.clip_text_features)
        return F.cross_entropy(logits, label) + self.cfg.TRAINER.KGCOOP.W * kg

    def loss_summary(self, output: tuple[Tensor, Tensor], label: Tensor, loss: Tensor) -> dict[str, float]:
        return super().loss_summary(output[0], label, loss)  # loss and top-1 acc of the logits, as the reference

    def drop_frozen_buffers(self, state_dict) -> dict[str, Tensor]:
        """CoOp's dropped buffers plus the reference's unused ``bias_vectors`` and ``meta_net.linear1``."""
        kept = super().drop_frozen_buffers(state_dict)
        return {k: v for k, v in kept.items() if k not in self.REFERENCE_UNUSED_KEYS}

