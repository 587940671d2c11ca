"""CLIP-LoRA: low-rank adapters in the attention of both CLIP towers, trained with cross-entropy.

Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR Workshops 2024,
arXiv:2405.18541; reference MaxZanella/CLIP-LoRA@358f0d7.  Spec: ``shared/specs/clip_lora_disef.md`` §1, §3.2, §6.

The LoRA layers are ``clip/lora.py``; the model, the iteration budget, the per-iteration cosine schedule, the
LoRA-only checkpoints and early stopping are ``trainers/common/lora_trainer.py`` (shared with DISEF).

Defaults = the reference recipe (§1.4, §1.7): LoRA on q, k, v of all blocks of both towers, r 2, alpha 1,
scale alpha / sqrt(r), dropout 0.25 on the LoRA input; AdamW (configs: lr 2e-4, betas (0.9, 0.999), weight
decay 1e-2), ``500 x shots`` iterations with a cosine schedule to 1e-6 stepped every iteration, batch 32, fp16
autocast + GradScaler, logit scale 100, prompt "a photo of a {}.", class prompts re-encoded at every step, no
validation, the last model tested.  ``configs/trainers/CLIP_LoRA/vit_b16_qkv_r2_a1_iters500.yaml``.

The seed notebook's "CLIP-LoRA" (§3.2, §3.6) is DISEF's LoRA recipe: q and v, vision r 64 / text r 16, alpha 32,
alpha / r, dropout 0.1, 15 epochs with a per-epoch cosine, logit scale 100, the flower template, no augmentation,
early stopping on val accuracy with patience 3.
``configs/trainers/CLIP_LoRA/vit_b16_qv_r64-16_a32_ep15_notebook.yaml``.

Deviations from the reference: the run length is expressed as epochs (``ceil(iters / batches per epoch)``) whose
last one stops at the iteration budget, so Dassl's loop, logs and resume apply; checkpoints are Dassl's
(``lora/model.pth.tar-<epoch>``, A/B only) plus ``lora_weights.pt`` in the reference format (§1.6) at the end;
the evaluation uses the cached merged weights instead of merging in place (``clip/lora.py``).  Seed-notebook bugs
fixed on purpose, with their literal switches, are listed in ``trainers/common/lora_trainer.py``.
"""
from __future__ import annotations

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.lora_trainer import LoRATrainer, lora_cfg_node


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    # Keys and comments: trainers/common/lora_trainer.py:lora_cfg_node; defaults = CLIP-LoRA's (spec §1.7)
    cfg.TRAINER.CLIP_LORA = lora_cfg_node()


@TRAINER_REGISTRY.register()
class CLIP_LoRA(LoRATrainer):  # noqa: N801  (registry key = the paper's spelling)
    """CLIP-LoRA.

    "Low-Rank Few-Shot Adaptation of Vision-Language Models", https://arxiv.org/abs/2405.18541
    """

    CFG_NODE = "CLIP_LORA"
