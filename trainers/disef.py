"""DISEF: LoRA fine-tuning of CLIP on real few-shot images plus filtered synthetic ones.

da Costa, Brugnara, Cornia, Cucchiara, Lopes, "Diversified in-domain synthesis with efficient fine-tuning for
few-shot classification", arXiv:2312.03046; reference vturrisi/disef@501ec4b (``fine-tune/``).
Spec: ``shared/specs/clip_lora_disef.md`` §2.4-§2.6, §3.2-§3.4, §6.

The synthetic images come from ``scripts/disef/generate.py`` (``trainers/common/disef_generation.py``): class
folders plus ``manifest.jsonl`` under ``TRAINER.DISEF.SYN_DIR``.  The model is ``trainers/common/lora_trainer.py``'s
(LoRA in the attention of both towers, prompts re-encoded every step).  Each step sees real images and synthetic
images in one forward pass and minimises ``LAMBDA * CE(real) + (1 - LAMBDA) * CE(synthetic)`` (``disef_loss``).

Batching (``BATCHING``): ``paired-max`` (DISEF's "max": B real + B synthetic per step, the shorter set cycled, an
epoch as long as the longer one), ``paired-min`` (DISEF's "min": the epoch ends with the shorter set) or ``mixed``
(the seed notebook: one shuffled loader over both sets, each batch split by origin; either part may be empty
and then contributes nothing).

Improved DISEF (the seed notebook, §3.4): ``F1_THRESHOLD`` > 0 computes the zero-shot per-class F1 on the
validation split and keeps synthetic images only for classes below it (the generation command has the same
``--f1-threshold`` so that the others are not even generated, and ``--filter-lora`` filters with a trained
CLIP-LoRA); its configs set ``LAMBDA`` 0.95 and lr 2e-5.  ``configs/trainers/DISEF/*_f1.yaml``.

Defaults = the paper's released recipe (§2.4-§2.5): q and v, vision r 64 / text r 16, alpha 32, alpha / r,
dropout 0.1, lambda 0.8, label smoothing 0.1, logit scale exp(CLIP's), the dataset's template, AdamW with weight
decay 1e-3, 50 epochs, cosine per step to 1e-7.  Not implemented: mixup / cutmix and RandAugment of the released
grid (``INPUT.TRANSFORMS`` can add ``randaugment``), the z-loss (weight 0 in every released run).
Deviations and seed-notebook fixes shared with CLIP-LoRA are listed in ``trainers/common/lora_trainer.py``.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dassl.config import register_cfg_defaults
from dassl.data.data_manager import build_data_loader
from dassl.data.datasets import Datum
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import progress

from .common.disef_generation import kept_images, low_f1_classes
from .common.lora_trainer import LoRATrainer, lora_cfg_node
from .common.text_features import class_text_features

logger = logging.getLogger(__name__)

BATCHINGS = ("paired-max", "paired-min", "mixed")
SYNTHETIC_DOMAIN = 1  # Datum.domain of synthetic images in the "mixed" loader (real images have 0)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    # LoRA and training keys: trainers/common/lora_trainer.py:lora_cfg_node, with DISEF's defaults (§2.5)
    cfg.TRAINER.DISEF = lora_cfg_node(
        PARAMS=["q", "v"], R=16, TEXT_R=16, VISION_R=64, ALPHA=32.0, SCALING="linear", DROPOUT=0.1,
        ITERS_PER_SHOT=0, ETA_MIN=1e-7, LOGIT_SCALE=0.0, TEMPLATE="", LABEL_SMOOTHING=0.1)
    # Weight of the real-image cross-entropy; the synthetic one gets 1 - LAMBDA (DISEF 0.8, improved DISEF 0.95)
    cfg.TRAINER.DISEF.LAMBDA = 0.8
    # Folder written by scripts/disef/generate.py (class folders + manifest.jsonl); "" = train on real images only
    cfg.TRAINER.DISEF.SYN_DIR = ""
    # Synthetic images used per class, in generation order; <= 0 = all (DISEF 64, notebook 32)
    cfg.TRAINER.DISEF.MAX_SYN_PER_CLASS = 64
    # paired-max, paired-min (B real + B synthetic per step, DISEF) or mixed (one shuffled loader, notebook)
    cfg.TRAINER.DISEF.BATCHING = "paired-max"
    # Synthetic images per step in the paired modes; 0 = DATALOADER.TRAIN_X.BATCH_SIZE
    cfg.TRAINER.DISEF.SYN_BATCH_SIZE = 0
    # > 0: synthetic images only for classes whose zero-shot val F1 is below it (improved DISEF: 0.70); <= 0: all
    cfg.TRAINER.DISEF.F1_THRESHOLD = -1.0


def disef_loss(logits: Tensor, labels: Tensor, synthetic: Tensor, lam: float, label_smoothing: float = 0.0) -> Tensor:
    """``lam * CE(real) + (1 - lam) * CE(synthetic)``, each a mean over its own rows (DISEF, §2.4 and §3.2).

    Args:
        logits: ``(B, n_cls)`` for real and synthetic rows together; labels ``(B,)``.
        synthetic: ``(B,)`` bool, True for synthetic rows.  An empty part contributes 0.
    """
    loss = logits.new_zeros(())
    for rows, weight in ((~synthetic, lam), (synthetic, 1.0 - lam)):
        if rows.any() and weight != 0:
            loss = loss + weight * F.cross_entropy(logits[rows], labels[rows], label_smoothing=label_smoothing)
    return loss


class PairedLoader:
    """Yields real batches extended with ``syn_img``/``syn_label`` from a second loader (DISEF's max/min modes)."""

    def __init__(self, real, synthetic, longest: bool) -> None:
        self.real, self.synthetic, self.longest = real, synthetic, longest

    def __len__(self) -> int:
        lengths = (len(self.real), len(self.synthetic))
        return max(lengths) if self.longest else min(lengths)

    def __iter__(self) -> Iterator[dict]:
        iterators = [iter(self.real), iter(self.synthetic)]
        for _ in range(len(self)):
            batches = []
            for k, loader in enumerate((self.real, self.synthetic)):
                try:
                    batches.append(next(iterators[k]))
                except StopIteration:  # the shorter set starts over (reshuffled)
                    iterators[k] = iter(loader)
                    batches.append(next(iterators[k]))
            real, synthetic = batches
            yield {**real, "syn_img": synthetic["img"], "syn_label": synthetic["label"]}


@TRAINER_REGISTRY.register()
class DISEF(LoRATrainer):
    """DISEF (and the F1-guided "improved DISEF" with ``F1_THRESHOLD`` > 0).

    "Diversified in-domain synthesis with efficient fine-tuning for few-shot classification",
    https://arxiv.org/abs/2312.03046
    """

    CFG_NODE = "DISEF"

    _synthetic: Optional[Tensor] = None  # (B,) bool of the current batch, set by parse_batch_train

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.DISEF
        if not 0 <= node.LAMBDA <= 1:
            raise ValueError(f"TRAINER.DISEF.LAMBDA={node.LAMBDA}; it must be in [0, 1]")
        if node.BATCHING not in BATCHINGS:
            raise ValueError(f"TRAINER.DISEF.BATCHING={node.BATCHING!r}; choose one of {', '.join(BATCHINGS)}")
        if node.SYN_BATCH_SIZE < 0:
            raise ValueError(f"TRAINER.DISEF.SYN_BATCH_SIZE={node.SYN_BATCH_SIZE}; use 0 (= train batch) or > 0")
        if node.SYN_DIR and not osp.isdir(node.SYN_DIR):
            raise FileNotFoundError(f"TRAINER.DISEF.SYN_DIR={node.SYN_DIR} is not a folder; generate the images with "
                                    "scripts/disef/generate.py --output-dir <dir> (or set SYN_DIR '' for real only)")
        if node.F1_THRESHOLD > 1:
            raise ValueError(f"TRAINER.DISEF.F1_THRESHOLD={node.F1_THRESHOLD}; an F1 is at most 1 (<= 0 = off)")
        super().check_cfg(cfg)

    # ------------------------------------------------------------------ synthetic data
    def synthetic_datums(self, classnames: Sequence[str], classes: Optional[Sequence[int]]) -> list[Datum]:
        """Kept images of ``SYN_DIR`` for the current classes (matched by name), at most MAX_SYN_PER_CLASS each."""
        node = self.cfg.TRAINER.DISEF
        by_name = {_normalise(name): label for label, name in enumerate(classnames)}
        allowed = set(range(len(by_name))) if classes is None else set(classes)
        datums = []
        for name, paths in kept_images(node.SYN_DIR).items():
            label = by_name.get(_normalise(name))
            if label is None or label not in allowed:
                continue  # e.g. a novel class, or a class above the F1 threshold
            paths = paths[:node.MAX_SYN_PER_CLASS] if node.MAX_SYN_PER_CLASS > 0 else paths
            classname = classnames[label]
            datums += [Datum(impath=p, label=label, domain=SYNTHETIC_DOMAIN, classname=classname) for p in paths]
        logger.info(f"Synthetic images: {len(datums)} for {len({d.label for d in datums})} classes from {node.SYN_DIR}")
        return datums

    @torch.no_grad()
    def zero_shot_f1_classes(self, dm, threshold: float) -> list[int]:
        """Classes whose zero-shot val F1 is below ``threshold``, with CLIP before LoRA and this run's prompt."""
        from .common.clip_loading import load_clip_to_cpu

        if dm.val_loader is None:
            raise ValueError("TRAINER.DISEF.F1_THRESHOLD needs a validation split; this dataset has none")
        clip_model = load_clip_to_cpu(self.cfg.MODEL.BACKBONE.NAME).to(self.device)
        classnames = dm.dataset.classnames
        text = class_text_features(clip_model, classnames, [self.template()],
                                   truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)  # (n_cls, E)
        labels, predictions = [], []
        for batch in progress(dm.val_loader, "zero-shot F1 (val)"):
            image = clip_model.encode_image(batch["img"].to(self.device)).float()
            predictions += (image @ text.t().float()).argmax(dim=-1).tolist()
            labels += batch["label"].tolist()
        classes = low_f1_classes(labels, predictions, len(classnames), threshold)
        logger.info(f"Zero-shot val F1 < {threshold}: {len(classes)}/{len(classnames)} classes get synthetic images: "
                    f"{[classnames[c] for c in classes]}")
        return classes

    def build_train_loader(self, dm):
        node, cfg = self.cfg.TRAINER.DISEF, self.cfg
        if not node.SYN_DIR:
            logger.warning("TRAINER.DISEF.SYN_DIR is empty: training on real images only (DISEF w/o synthetic data)")
            return dm.train_loader_x
        classes = self.zero_shot_f1_classes(dm, node.F1_THRESHOLD) if node.F1_THRESHOLD > 0 else None
        synthetic = self.synthetic_datums(dm.dataset.classnames, classes)
        if not synthetic:
            logger.warning("No synthetic image for the current classes: training on real images only")
            return dm.train_loader_x
        x = cfg.DATALOADER.TRAIN_X
        if node.BATCHING == "mixed":
            return build_data_loader(cfg, sampler_type=x.SAMPLER, data_source=dm.dataset.train_x + synthetic,
                                     batch_size=x.BATCH_SIZE, tfm=dm.tfm_train, is_train=True)
        syn_loader = build_data_loader(cfg, sampler_type="RandomSampler", data_source=synthetic,
                                       batch_size=node.SYN_BATCH_SIZE or x.BATCH_SIZE, tfm=dm.tfm_train,
                                       is_train=True)
        return PairedLoader(dm.train_loader_x, syn_loader, longest=node.BATCHING == "paired-max")

    # ------------------------------------------------------------------ training step
    def parse_batch_train(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Real and synthetic images as one batch (one forward pass); ``self._synthetic`` marks the rows."""
        image, label = batch["img"], batch["label"]
        if "syn_img" in batch:  # paired modes: real rows first
            synthetic = torch.arange(len(label) + len(batch["syn_label"])) >= len(label)
            image, label = torch.cat([image, batch["syn_img"]]), torch.cat([label, batch["syn_label"]])
        else:  # mixed mode (or real only): the domain tells the origin
            synthetic = batch["domain"] == SYNTHETIC_DOMAIN
        self._synthetic = synthetic.to(self.device)
        return image.to(self.device), label.to(self.device)

    def compute_loss(self, output: Tensor, label: Tensor) -> Tensor:
        node = self.cfg.TRAINER.DISEF
        return disef_loss(output, label, self._synthetic, node.LAMBDA, node.LABEL_SMOOTHING)

    def loss_summary(self, output: Tensor, label: Tensor, loss: Tensor) -> dict[str, float]:
        """``loss`` plus the accuracy on the real rows (``acc``) and the synthetic share of the batch."""
        real = ~self._synthetic
        summary = {"loss": loss.item()}
        if real.any():
            summary["acc"] = output[real].argmax(dim=-1).eq(label[real]).float().mean().item() * 100
        summary["syn"] = self._synthetic.float().mean().item()
        return summary


def _normalise(classname: str) -> str:
    """Class names compared across folders and datasets: lower case, "_" read as a space."""
    return " ".join(classname.replace("_", " ").lower().split())
