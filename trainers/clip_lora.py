"""CLIP-LoRA: low-rank adapters in the attention of both CLIP towers, trained with cross-entropy.

Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR Workshops 2024,
arXiv:2405.18541; reference MaxZanella/CLIP-LoRA@358f0d7.

LoRA (``clip/lora.py``) on the q, k and v projections of every attention block of both towers, rank 2, alpha 1,
update scaled by alpha / sqrt(r), dropout 0.25 on its input; only the low-rank factors train, with AdamW for
``500 x shots`` iterations under a cosine schedule stepped every iteration, on the cross-entropy of
``100 x cos(image, text)`` where the class prompts ("a photo of a {}.") go through the adapted text tower at
every step; the last model is tested.  The model, the iteration budget, the LoRA-only checkpoints and early
stopping live in ``trainers/common/lora_trainer.py`` (shared with DISEF); recipes, the seed notebook's variant and
the differences from the reference: docs/methods/clip_lora.md.
"""
from __future__ import annotations

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.lora_trainer import LoRATrainer, lora_cfg_node


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    # Keys and comments: trainers/common/lora_trainer.py:lora_cfg_node; defaults = CLIP-LoRA's command line
    cfg.TRAINER.CLIP_LORA = lora_cfg_node()


@TRAINER_REGISTRY.register()
class CLIP_LoRA(LoRATrainer):  # noqa: N801  (registry key = the paper's spelling)
    """CLIP-LoRA.

    "Low-Rank Few-Shot Adaptation of Vision-Language Models", https://arxiv.org/abs/2405.18541
    """

    CFG_NODE = "CLIP_LORA"
