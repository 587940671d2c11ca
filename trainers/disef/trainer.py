"""DISEF: LoRA fine-tuning of CLIP on real few-shot images plus filtered synthetic ones.

Turrisi da Costa, Dall'Asen, Wang, Sebe, Ricci, "Diversified in-domain synthesis with efficient fine-tuning for
few-shot classification", arXiv:2312.03046; reference vturrisi/disef@501ec4b (``fine-tune/``).

The model is ``LoRATrainer``'s (LoRA in the attention of both towers, class prompts re-encoded every step).  Each
step sees real images and synthetic images (written by ``scripts/disef/generate.py`` under ``SYN_DIR``) in one
forward pass and minimises ``LAMBDA * CE(real) + (1 - LAMBDA) * CE(synthetic)``, each part optionally mixed by
Mixup/CutMix with soft targets.  ``BATCHING`` pairs B real with B synthetic images per step (DISEF's "max" and "min"
modes) or draws one shuffled loader over both sets (the seed notebook).  ``F1_THRESHOLD`` > 0 is the notebook's
"improved DISEF": synthetic images only for the classes whose zero-shot validation F1 is below the threshold.
Recipes, formulas and the differences from the reference: docs/methods/disef.md.
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
from dassl.utils import all_gather_object, get_world_size, is_distributed, progress

from ..common.clip_loading import load_clip_to_cpu
from ..common.lora_trainer import LoRATrainer, lora_cfg_node
from ..common.text_features import class_text_features
from .mixing import BatchMixer, global_sum, soft_target_cross_entropy
from .pipeline import kept_images, low_f1_classes

logger = logging.getLogger(__name__)

BATCHINGS = ("paired-max", "paired-min", "mixed")
SYNTHETIC_DOMAIN = 1  # Datum.domain of synthetic images in the "mixed" loader (real images have 0)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    # LoRA and training keys: trainers/common/lora_trainer.py:lora_cfg_node, with DISEF's defaults
    cfg.TRAINER.DISEF = lora_cfg_node(
        PARAMS=["q", "v"], R=16, TEXT_R=16, VISION_R=64, ALPHA=32.0, SCALING="linear", DROPOUT=0.1,
        SHARED_DROPOUT=True, ITERS_PER_SHOT=0, ETA_MIN=1e-7, LOGIT_SCALE=0.0, TEMPLATE="", LABEL_SMOOTHING=0.1)
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
    # Mixup / CutMix Beta(alpha, alpha) of the real and (separately) the synthetic half of each batch, with soft
    # targets (LABEL_SMOOTHING folded in); 0 = off.  DISEF's released runs: 0.1 / 0.1 (grid: also 0.8 / 1.0)
    cfg.TRAINER.DISEF.MIXUP_ALPHA = 0.0
    cfg.TRAINER.DISEF.CUTMIX_ALPHA = 0.0
    # Probability that a batch is mixed, and that CutMix (rather than Mixup) is used when both are on (timm's)
    cfg.TRAINER.DISEF.MIX_PROB = 1.0
    cfg.TRAINER.DISEF.MIX_SWITCH_PROB = 0.5


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float, reduction: str = "mean") -> Tensor:
    """Cross-entropy of class indices ``(B,)`` (with label smoothing) or soft targets ``(B, n_cls)``."""
    if targets.dim() == 2:
        return soft_target_cross_entropy(logits, targets, reduction)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)


def disef_loss(logits: Tensor, targets: Tensor, synthetic: Tensor, lam: float, label_smoothing: float = 0.0,
               totals: Optional[Sequence[int]] = None) -> Tensor:
    """``lam * CE(real) + (1 - lam) * CE(synthetic)``, each the mean over its own rows (DISEF).

    Args:
        logits: ``(B, n_cls)`` for real and synthetic rows together; targets ``(B,)`` labels or ``(B, n_cls)`` soft.
        synthetic: ``(B,)`` bool, True for synthetic rows.  An empty part contributes 0.
        totals: under torchrun, the (real, synthetic) row counts of the global batch: each part is then its
            sum over this rank's rows divided by the global count, times the world size (the engine averages the
            ranks' gradients), which equals the single-process mean however the rows fall on the ranks.
    """
    parts = ((~synthetic, lam), (synthetic, 1.0 - lam))
    if totals is None:
        loss = logits.new_zeros(())
        for rows, weight in parts:
            if rows.any() and weight != 0:
                loss = loss + weight * cross_entropy(logits[rows], targets[rows], label_smoothing)
        return loss
    loss = logits.sum() * 0.0  # a graph on every rank, even one whose rows all have weight 0
    for (rows, weight), total in zip(parts, totals):
        if total > 0 and weight != 0 and rows.any():
            part = cross_entropy(logits[rows], targets[rows], label_smoothing, reduction="sum")
            loss = loss + weight * part * (get_world_size() / total)
    return loss


class PairedLoader:
    """Yields real batches extended with ``syn_img``/``syn_label`` from a second loader (DISEF's max/min modes).

    Both loaders are Dassl train loaders, so under torchrun each rank gets its slice of the same global batches.
    """

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
        if node.MIXUP_ALPHA < 0 or node.CUTMIX_ALPHA < 0 or not 0 <= node.MIX_PROB <= 1 \
                or not 0 <= node.MIX_SWITCH_PROB <= 1:
            raise ValueError(f"TRAINER.DISEF.MIXUP_ALPHA={node.MIXUP_ALPHA} / CUTMIX_ALPHA={node.CUTMIX_ALPHA} must be "
                             f">= 0 and MIX_PROB={node.MIX_PROB} / MIX_SWITCH_PROB={node.MIX_SWITCH_PROB} in [0, 1]")
        if self.mixes(cfg) and node.BATCHING == "mixed" and node.SYN_DIR:
            raise ValueError("TRAINER.DISEF.MIXUP_ALPHA / CUTMIX_ALPHA mix the real and the synthetic half of a paired "
                             "batch separately; use BATCHING paired-max or paired-min with them (or set both to 0)")
        super().check_cfg(cfg)

    @staticmethod
    def mixes(cfg) -> bool:
        node = cfg.TRAINER.DISEF
        return node.MIXUP_ALPHA > 0 or node.CUTMIX_ALPHA > 0

    # ------------------------------------------------------------------ synthetic data
    def synthetic_datums(self, classnames: Sequence[str], classes: Optional[Sequence[int]]) -> list[Datum]:
        """Kept images of ``SYN_DIR`` for the current classes (matched by name), at most MAX_SYN_PER_CLASS each."""
        node = self.cfg.TRAINER.DISEF
        by_name = {normalise_classname(name): label for label, name in enumerate(classnames)}
        allowed = set(range(len(by_name))) if classes is None else set(classes)
        datums = []
        for name, paths in kept_images(node.SYN_DIR).items():
            label = by_name.get(normalise_classname(name))
            if label is None or label not in allowed:
                continue  # e.g. a novel class, or a class above the F1 threshold
            paths = paths[:node.MAX_SYN_PER_CLASS] if node.MAX_SYN_PER_CLASS > 0 else paths
            classname = classnames[label]
            datums += [Datum(impath=p, label=label, domain=SYNTHETIC_DOMAIN, classname=classname) for p in paths]
        logger.info(f"Synthetic images: {len(datums)} for {len({d.label for d in datums})} classes from {node.SYN_DIR}")
        return datums

    @torch.no_grad()
    def zero_shot_f1_classes(self, dm, threshold: float) -> list[int]:
        """Classes whose zero-shot val F1 is below ``threshold``, with CLIP before LoRA and this run's prompts.

        Under torchrun each rank classifies its block of the val split and the blocks are gathered, so every rank
        selects the same classes.
        """
        if dm.val_loader is None:
            raise ValueError("TRAINER.DISEF.F1_THRESHOLD needs a validation split; this dataset has none")
        backbone = self.cfg.MODEL.BACKBONE
        clip_model = load_clip_to_cpu(backbone.NAME, trust_local_archive=backbone.TRUST_LOCAL_ARCHIVE).to(self.device)
        classnames = dm.dataset.classnames
        text = class_text_features(clip_model, classnames, self.templates(),
                                   truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)  # (n_cls, E)
        labels, predictions = [], []
        for batch in progress(dm.val_loader, "zero-shot F1 (val)"):
            image = clip_model.encode_image(batch["img"].to(self.device)).float()
            predictions += (image @ text.t().float()).argmax(dim=-1).tolist()
            labels += batch["label"].tolist()
        blocks = all_gather_object((labels, predictions))  # rank order = dataset order
        labels, predictions = [y for b in blocks for y in b[0]], [p for b in blocks for p in b[1]]
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
    def batch_mixer(self) -> Optional[BatchMixer]:
        node = self.cfg.TRAINER.DISEF
        if not self.mixes(self.cfg):
            return None
        return BatchMixer(node.MIXUP_ALPHA, node.CUTMIX_ALPHA, self.num_classes, node.MIX_PROB, node.MIX_SWITCH_PROB,
                          node.LABEL_SMOOTHING)

    def parse_batch_train(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Real and synthetic images as one batch (one forward pass); ``self._synthetic`` marks the rows.

        With Mixup/CutMix the real and the synthetic half are mixed separately and the targets are soft
        ``(B, n_cls)``; otherwise they are labels ``(B,)``.
        """
        mixer = self.batch_mixer()
        halves = [(batch["img"], batch["label"])]
        if "syn_img" in batch:  # paired modes: real rows first
            halves.append((batch["syn_img"], batch["syn_label"]))
        images, targets = [], []
        for image, label in halves:
            image, label = image.to(self.device), label.to(self.device)
            if mixer is not None:
                image, label = mixer(image, label)  # one draw per half, real first (as the reference)
            images.append(image)
            targets.append(label)
        if len(halves) == 2:
            synthetic = torch.arange(sum(len(t) for t in targets)) >= len(targets[0])
        else:  # mixed mode (or real only): the domain tells the origin
            synthetic = batch["domain"] == SYNTHETIC_DOMAIN
        self._synthetic = synthetic.to(self.device)
        return torch.cat(images), torch.cat(targets)

    def compute_loss(self, output: Tensor, label: Tensor) -> Tensor:
        node = self.cfg.TRAINER.DISEF
        totals = None
        if is_distributed():  # the rows of each part over the global batch
            local = torch.stack([(~self._synthetic).sum(), self._synthetic.sum()])
            totals = global_sum(local).tolist()
            # the loss is already this rank's share of the global one: the engine must not rescale it for an
            # uneven last batch (its rank_loss_weight assumes a plain mean over the rank's rows)
            self.rank_loss_weight = 1.0
        return disef_loss(output, label, self._synthetic, node.LAMBDA, node.LABEL_SMOOTHING, totals)

    def loss_summary(self, output: Tensor, label: Tensor, loss: Tensor) -> dict[str, float]:
        """``loss``, the accuracy on the real rows (``acc``; mixed rows count their larger share's class) and the
        synthetic share of the batch."""
        real = ~self._synthetic
        summary = {"loss": loss.item()}
        if real.any():
            classes = label[real].argmax(dim=-1) if label.dim() == 2 else label[real]
            summary["acc"] = output[real].argmax(dim=-1).eq(classes).float().mean().item() * 100
        summary["syn"] = self._synthetic.float().mean().item()
        return summary


def normalise_classname(classname: str) -> str:
    """Class names compared across folders and datasets: lower case, "_" read as a space."""
    return " ".join(classname.replace("_", " ").lower().split())
