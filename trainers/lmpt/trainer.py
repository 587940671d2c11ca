"""LMPT: class-specific prompts for long-tailed multi-label recognition, with a caption embedding loss.

Xia, Xu, Ju, Hu, Chen, Ge, "LMPT: Prompt Tuning with Class-Specific Embedding Loss for Long-tailed Multi-Label
Visual Recognition", ALVR @ ACL 2024, arXiv:2305.04536.  Reference implementation:
richard-peng-xia/LMPT@aab39ca (``lmpt/train.py``, ``lmpt/dbl.py``, ``lmpt/csel.py``).

A frozen CLIP scores every class with CoOp prompts that have class-specific contexts (``N_CTX`` = 16 vectors per
class); logits are ``100 cos(image, class text)``.  Only the contexts are trained, with
``L = LAM * L_cls + (1 - LAM) * L_cse``: ``L_cls`` a multi-label loss on the logits (the Distribution-Balanced
loss by default, with constants the dataset declares), ``L_cse`` the class-specific embedding loss that pulls the
prompt token embeddings of each present class (shifted by ``M_CTX`` positions) towards the word embeddings of
the image's caption, with class-aware margins ``~ n_c^(-1/4)`` and weights ``~ n_c^(-gamma)`` (``losses.py``).
``USE_CSE False`` (or ``LAM 1``) is the "CoOp + L_cls" baseline.  The formulas, the defaults, every deliberate
difference from the reference with the switch that restores it, and the mapping of the reference's flags:
docs/methods/lmpt.md.
"""
from __future__ import annotations

import functools
import logging
import random
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchvision.transforms import Compose, Normalize, Resize, ToTensor
from yacs.config import CfgNode as CN

from vlprompt.clip.clip import CONTEXT_LENGTH
from dassl.config import register_cfg_defaults
from dassl.data.transforms import INTERPOLATION_MODES
from dassl.engine import TRAINER_REGISTRY
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import all_gather_object, get_rank, get_world_size, is_distributed

from ..common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase
from ..common.prompt_trainer import ClipPromptTrainer
from .losses import (CSE_DIST_REDUCES, CSE_FORMS, CSE_FREQS, DBL_DEFAULT_MAP_MU, DBL_DEFAULT_NEG_SCALE,
                     DBL_FOCAL_MODES, ClassSpecificEmbeddingLoss, DistributionBalancedLoss, asymmetric_loss, bce_loss,
                     focal_loss)
from .model import LMPTCLIP, tokenize_captions

logger = logging.getLogger(__name__)

CLS_LOSSES = ("dbl", "bce", "focal", "asl")
VAL_SOURCES = ("train_holdout", "dataset")
MULTILABEL_EVALUATOR = "MultiLabelClassification"
# TRAINER.LMPT keys with a fixed set of values (checked in check_cfg)
CHOICE_KEYS = {
    "CLASS_TOKEN_POSITION": CLASS_TOKEN_POSITIONS, "CLS_LOSS": CLS_LOSSES, "VAL_SOURCE": VAL_SOURCES,
    "DBL.FOCAL": DBL_FOCAL_MODES, "ASL.REDUCTION": ("mean", "sum"), "CSE.FORM": CSE_FORMS, "CSE.FREQ": CSE_FREQS,
    "CSE.DIST_REDUCE": CSE_DIST_REDUCES,
}


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.LMPT = CN()
    # Number of context vectors (ignored when CTX_INIT is set: its word count is used)
    cfg.TRAINER.LMPT.N_CTX = 16
    # Offset between caption and prompt positions in the CSE loss (LMPT's --m_ctx)
    cfg.TRAINER.LMPT.M_CTX = 2
    # Class-specific contexts (LMPT: always); ignored (warned) when CTX_INIT is set, as in LMPT/CoOp
    cfg.TRAINER.LMPT.CSC = True
    # Words to initialise a (generic) context from, e.g. "a photo of a"; "" = random N(0, INIT_STD^2)
    cfg.TRAINER.LMPT.CTX_INIT = ""
    # Class tokens relative to the context: end (LMPT), middle or front
    cfg.TRAINER.LMPT.CLASS_TOKEN_POSITION = "end"
    # fp16 (LMPT: CLIP and ctx in half precision), fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    cfg.TRAINER.LMPT.PREC = "fp16"
    # Under fp16, keep the contexts in fp32 (master weights; small SGD updates are not rounded away); False = LMPT,
    # whose SGD updates the half-precision contexts in place
    cfg.TRAINER.LMPT.FP32_MASTER = True
    # Standard deviation of the random context init (hard-coded 0.02 in LMPT/CoOp)
    cfg.TRAINER.LMPT.INIT_STD = 0.02
    # lambda in L = LAM * L_cls + (1 - LAM) * L_cse, in [0, 1]
    cfg.TRAINER.LMPT.LAM = 0.5
    # Add the class-specific embedding loss; False trains with L_cls alone (CoOp + L_cls baseline)
    cfg.TRAINER.LMPT.USE_CSE = True
    # Classification loss: dbl (LMPT), bce, focal or asl
    cfg.TRAINER.LMPT.CLS_LOSS = "dbl"
    # Captions are cut to this many characters before tokenising (LMPT: 75); -1 = no cut (token-truncated)
    cfg.TRAINER.LMPT.CAPTION_MAX_CHARS = 75
    # Model selection split: train_holdout (VAL_FRACTION of the training images) or dataset (its val split;
    # COCO-LT / VOC-LT have none and use the test set there: LMPT selects its best epoch on the test set)
    cfg.TRAINER.LMPT.VAL_SOURCE = "train_holdout"
    # Fraction of the training images held out for model selection when VAL_SOURCE = train_holdout
    cfg.TRAINER.LMPT.VAL_FRACTION = 0.1
    # Seed of the hold-out split (fixed across run seeds, so every seed selects on the same images)
    cfg.TRAINER.LMPT.VAL_SEED = 0
    # Drop the last incomplete training batch of each epoch (Dassl); False = LMPT, whose loader keeps it
    cfg.TRAINER.LMPT.DROP_LAST = True
    # Test images resized to exactly INPUT.SIZE, aspect ratio not kept (LMPT); False = Dassl's resize + center crop
    cfg.TRAINER.LMPT.SQUASH_TEST_RESIZE = True
    cfg.TRAINER.LMPT.PLATEAU = CN()
    # ReduceLROnPlateau on the validation mAP, stepped every epoch (LMPT; replaces OPTIM.LR_SCHEDULER)
    cfg.TRAINER.LMPT.PLATEAU.ENABLED = True
    # Epochs without improvement before the LR is multiplied by FACTOR
    cfg.TRAINER.LMPT.PLATEAU.PATIENCE = 5
    cfg.TRAINER.LMPT.PLATEAU.FACTOR = 0.1
    cfg.TRAINER.LMPT.PLATEAU.MIN_LR = 1e-7
    cfg.TRAINER.LMPT.DBL = CN()  # Distribution-Balanced loss (CLS_LOSS dbl)
    # Focal factor: batch (LMPT code: one batch-level factor), element (DB paper) or none
    cfg.TRAINER.LMPT.DBL.FOCAL = "batch"
    # Focusing exponent gamma_f
    cfg.TRAINER.LMPT.DBL.GAMMA = 2.0
    # Constant multiplier s of the focal loss
    cfg.TRAINER.LMPT.DBL.BALANCE_PARAM = 2.0
    # Negative-logit scale lambda_n of NTR; < 0 = the dataset's DBL_NEG_SCALE (COCO-LT 2.0, VOC-LT 5.0; 2.0 if it
    # declares none); 1 = off
    cfg.TRAINER.LMPT.DBL.NEG_SCALE = -1.0
    # Class-prior bias strength kappa of NTR; 0 = off
    cfg.TRAINER.LMPT.DBL.INIT_BIAS = 0.05
    # Re-balanced weighting on/off; its map alpha (floor), beta (slope)
    cfg.TRAINER.LMPT.DBL.REWEIGHT = True
    cfg.TRAINER.LMPT.DBL.MAP_ALPHA = 0.1
    cfg.TRAINER.LMPT.DBL.MAP_BETA = 10.0
    # ... and mu (centre; DBL's map_param "gamma", LMPT README's --gamma); < 0 = the dataset's DBL_MAP_MU
    # (COCO-LT 0.2, VOC-LT 0.3; 0.2 if it declares none)
    cfg.TRAINER.LMPT.DBL.MAP_MU = -1.0
    cfg.TRAINER.LMPT.DBL.LOSS_WEIGHT = 1.0
    cfg.TRAINER.LMPT.FOCAL = CN()  # CLS_LOSS focal: sigmoid focal loss
    cfg.TRAINER.LMPT.FOCAL.GAMMA = 2.0
    # alpha balancing of positives; < 0 = off
    cfg.TRAINER.LMPT.FOCAL.ALPHA = -1.0
    cfg.TRAINER.LMPT.ASL = CN()  # CLS_LOSS asl: asymmetric loss as LMPT builds it
    cfg.TRAINER.LMPT.ASL.GAMMA_NEG = 4.0
    cfg.TRAINER.LMPT.ASL.GAMMA_POS = 0.0
    # Probability shift of negatives
    cfg.TRAINER.LMPT.ASL.CLIP = 0.05
    # mean over B x C (LMPT) or sum (ASL paper)
    cfg.TRAINER.LMPT.ASL.REDUCTION = "mean"
    cfg.TRAINER.LMPT.CSE = CN()  # class-specific embedding loss
    # hinge_embedding: present classes pulled towards the caption (w d), absent ones pushed beyond their margin
    # (w max(0, margin - d)); code_literal = LMPT's released code, w max(0, margin - (2y - 1) d), which is inactive
    # for present classes and pulls every absent class towards the caption
    cfg.TRAINER.LMPT.CSE.FORM = "hinge_embedding"
    # counts: q_c = n_c; softmax_counts = LMPT's released code, q = softmax over the classes of the counts, which
    # underflows to one-hot (infinite margins and a NaN loss for every class but the most frequent)
    cfg.TRAINER.LMPT.CSE.FREQ = "counts"
    # Distance over token positions: sum (LMPT) or mean
    cfg.TRAINER.LMPT.CSE.DIST_REDUCE = "sum"
    # Base margin Delta (margin_c = Delta * q_c^(-1/4))
    cfg.TRAINER.LMPT.CSE.MARGIN = 0.2
    # Re-weighting exponent gamma (w_c ~ q_c^(-gamma)); not DBL's MAP_MU
    cfg.TRAINER.LMPT.CSE.GAMMA = 2.0


def holdout_split(items: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): ``round(fraction * N)`` (at least 1) items drawn with ``random.Random(seed)``, order kept."""
    n_val = max(1, int(round(fraction * len(items))))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [x for i, x in enumerate(items) if i in val_idx]


def squash_test_transform(cfg) -> Compose:
    """Resize to exactly ``INPUT.SIZE`` (aspect ratio not kept), to tensor, normalise (LMPT's test transform)."""
    tfm = [Resize(tuple(cfg.INPUT.SIZE), interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]), ToTensor()]
    if "normalize" in cfg.INPUT.TRANSFORMS:
        tfm.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
    return Compose(tfm)


def training_class_counts(dataset) -> tuple[np.ndarray, int]:
    """``n_c`` (the dataset's ``class_freq``, else counted from ``train_x``) and ``N`` = training images."""
    freq = getattr(dataset, "class_freq", None)
    if freq is None:
        freq = np.zeros(dataset.num_classes, dtype=np.int64)
        for item in dataset.train_x:
            freq[list(item.label)] += 1
    return np.asarray(freq), len(dataset.train_x)


def gather_rows(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Under torchrun, each tensor's rows ``(B_r, ...)`` of every rank concatenated in rank order: the global
    batch, in the single-process order.  Only this rank's rows keep their gradient.  One process: unchanged."""
    if not is_distributed():
        return list(tensors)
    rank = get_rank()
    per_rank = all_gather_object([t.detach().cpu() for t in tensors])  # [rank][tensor]
    gathered = []
    for k, local in enumerate(tensors):
        blocks = [local if r == rank else block[k].to(local.device, local.dtype) for r, block in enumerate(per_rank)]
        gathered.append(torch.cat(blocks))
    return gathered


@TRAINER_REGISTRY.register()
class LMPT(ClipPromptTrainer):
    """Prompt tuning with class-specific embedding loss (LMPT).

    "LMPT: Prompt Tuning with Class-Specific Embedding Loss for Long-tailed Multi-Label Visual Recognition",
    https://arxiv.org/abs/2305.04536
    """

    # Checked under torchrun (tests/test_registry_ddp.py): losses on the gathered global batch, caption rows looked
    # up by each batch's dataset indices, the same hold-out split on every rank, evaluation gathered by the engine.
    LEARNABLE = ("prompt_learner",)

    def fp32_master_weights(self) -> bool:
        return self.cfg.TRAINER.LMPT.FP32_MASTER

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.LMPT
        if cfg.TEST.EVALUATOR != MULTILABEL_EVALUATOR:
            raise ValueError(f"TEST.EVALUATOR={cfg.TEST.EVALUATOR!r}; LMPT needs {MULTILABEL_EVALUATOR} "
                             "(set it in the YAML)")
        for key, allowed in CHOICE_KEYS.items():
            value = functools.reduce(getattr, key.split("."), node)
            if value not in allowed:
                raise ValueError(f"TRAINER.LMPT.{key}={value!r}; choose one of {', '.join(allowed)}")
        checks = [
            (bool(node.CTX_INIT) or node.N_CTX >= 1, f"TRAINER.LMPT.N_CTX={node.N_CTX}; use >= 1 or set CTX_INIT"),
            (0 <= node.M_CTX < CONTEXT_LENGTH, f"TRAINER.LMPT.M_CTX={node.M_CTX}; choose 0..{CONTEXT_LENGTH - 1}"),
            (0.0 <= node.LAM <= 1.0, f"TRAINER.LMPT.LAM={node.LAM}; it must be in [0, 1]"),
            (node.INIT_STD > 0, f"TRAINER.LMPT.INIT_STD={node.INIT_STD}; it must be > 0"),
            (node.CSE.MARGIN > 0, f"TRAINER.LMPT.CSE.MARGIN={node.CSE.MARGIN}; it must be > 0"),
            (node.CAPTION_MAX_CHARS == -1 or node.CAPTION_MAX_CHARS > 0,
             f"TRAINER.LMPT.CAPTION_MAX_CHARS={node.CAPTION_MAX_CHARS}; use -1 (no cut) or > 0"),
            (0.0 < node.VAL_FRACTION < 1.0, f"TRAINER.LMPT.VAL_FRACTION={node.VAL_FRACTION}; it must be in (0, 1)"),
            (not (node.PLATEAU.ENABLED and cfg.OPTIM.WARMUP_EPOCH > 0),
             f"OPTIM.WARMUP_EPOCH={cfg.OPTIM.WARMUP_EPOCH} has no effect with TRAINER.LMPT.PLATEAU.ENABLED; "
             "set it to 0 or disable the plateau schedule"),
            (0.0 < node.PLATEAU.FACTOR < 1.0,
             f"TRAINER.LMPT.PLATEAU.FACTOR={node.PLATEAU.FACTOR}; it must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        super().check_cfg(cfg)

    # ------------------------------------------------------------------ data
    def build_test_transform(self):
        """LMPT squashes test images to ``INPUT.SIZE`` (``SQUASH_TEST_RESIZE``); else Dassl's transform."""
        return squash_test_transform(self.cfg) if self.cfg.TRAINER.LMPT.SQUASH_TEST_RESIZE else None

    def build_data_manager(self):
        """Dassl's loaders with the model-selection split, and the caption tokens of the training images."""
        node = self.cfg.TRAINER.LMPT
        dm = super().build_data_manager()
        if not dm.dataset.train_x[0].is_multilabel:
            raise ValueError(f"LMPT needs a multi-label dataset (Datum labels as tuples); {self.cfg.DATASET.NAME} "
                             "is not")
        self.set_model_selection_split(dm)
        if not node.DROP_LAST:
            self.keep_last_batch(dm)
        if node.USE_CSE:
            self.caption_tokens = self.training_caption_tokens(dm.split_items["train_x"])
        return dm

    def set_model_selection_split(self, dm) -> None:
        """Hold out ``VAL_FRACTION`` of the training images as val (``train_holdout``), or keep the dataset's."""
        node = self.cfg.TRAINER.LMPT
        dataset = dm.dataset
        if node.VAL_SOURCE == "dataset":
            same = dataset.val is dataset.test
            logger.info("Model selection on the dataset's val split" + (
                " = the TEST set (as LMPT selects its best epoch; optimistic)" if same else ""))
            return
        # A fixed-seed draw over the dataset's order: the same split on every rank and for every run seed.
        train_items, val_items = holdout_split(dataset.train_x, node.VAL_FRACTION, node.VAL_SEED)
        dm.set_split("train_x", train_items)
        dm.set_split("val", val_items)
        logger.info(f"Model selection on {len(val_items)} held-out training images (VAL_FRACTION "
                    f"{node.VAL_FRACTION}, VAL_SEED {node.VAL_SEED}); training on {len(train_items)}")

    def keep_last_batch(self, dm) -> None:
        """Train on the last incomplete batch too (LMPT's loader), which every rank must get a share of."""
        items = dm.split_items["train_x"]
        batch_size, world_size = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, get_world_size()
        last = len(items) % batch_size
        if last and (world_size - 1) * -(-last // world_size) >= last:
            raise ValueError(f"TRAINER.LMPT.DROP_LAST False: the last batch of {last} training images leaves a "
                             f"process of {world_size} without images; change DATALOADER.TRAIN_X.BATCH_SIZE "
                             f"({batch_size}) or the number of processes")
        dm.set_split("train_x", items, drop_last=False)

    def training_caption_tokens(self, train_items: Sequence) -> Tensor:
        """Caption token ids ``(N, 77)``, row i for ``train_loader_x``'s ``data_source[i]``."""
        missing = [item.impath for item in train_items if not item.caption]
        if missing:
            raise ValueError(f"{self.cfg.DATASET.NAME}: {len(missing)} training images have no caption (e.g. "
                             f"{missing[0]}); LMPT's CSE loss needs one, or set TRAINER.LMPT.USE_CSE False")
        # Every batch carries the data-source indices of its images (also the per-rank slices under torchrun),
        # so the lookup needs no knowledge of the sampler.
        return tokenize_captions([item.caption for item in train_items], self.cfg.TRAINER.LMPT.CAPTION_MAX_CHARS)

    # ------------------------------------------------------------------ model and losses
    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.LMPT
        prompt_learner = PromptLearnerBase(
            classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
            class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD)
        return LMPTCLIP(prompt_learner, self.make_text_encoder(clip_model), clip_model)

    def build_model(self) -> None:
        super().build_model()
        node = self.cfg.TRAINER.LMPT
        class_freq, num_train = training_class_counts(self.dm.dataset)
        logger.info(f"Loss statistics: N = {num_train} training images, n_c = {class_freq.tolist()}")
        self.cls_loss = self.build_cls_loss(class_freq, num_train)
        self.cse_loss = None
        if node.USE_CSE:
            self.cse_loss = ClassSpecificEmbeddingLoss(
                class_freq, margin=node.CSE.MARGIN, gamma=node.CSE.GAMMA, m_ctx=node.M_CTX, form=node.CSE.FORM,
                freq=node.CSE.FREQ, dist_reduce=node.CSE.DIST_REDUCE).to(self.device)

    def build_cls_loss(self, class_freq: np.ndarray, num_train: int) -> Callable[[Tensor, Tensor], Tensor]:
        node = self.cfg.TRAINER.LMPT
        if node.CLS_LOSS == "bce":
            return bce_loss
        if node.CLS_LOSS == "focal":
            return functools.partial(focal_loss, gamma=node.FOCAL.GAMMA, alpha=node.FOCAL.ALPHA)
        if node.CLS_LOSS == "asl":
            return functools.partial(asymmetric_loss, gamma_neg=node.ASL.GAMMA_NEG, gamma_pos=node.ASL.GAMMA_POS,
                                     clip=node.ASL.CLIP, reduction=node.ASL.REDUCTION)
        dbl = node.DBL
        neg_scale, map_mu = self.dbl_dataset_constants()
        neg_scale = dbl.NEG_SCALE if dbl.NEG_SCALE >= 0 else neg_scale
        map_mu = dbl.MAP_MU if dbl.MAP_MU >= 0 else map_mu
        logger.info(f"DB loss: focal {dbl.FOCAL}, neg_scale {neg_scale}, map_mu {map_mu}")
        return DistributionBalancedLoss(
            class_freq, num_train, focal=dbl.FOCAL, gamma=dbl.GAMMA, balance_param=dbl.BALANCE_PARAM,
            neg_scale=neg_scale, init_bias=dbl.INIT_BIAS, map_alpha=dbl.MAP_ALPHA, map_beta=dbl.MAP_BETA,
            map_mu=map_mu, loss_weight=dbl.LOSS_WEIGHT, reweight=dbl.REWEIGHT).to(self.device)

    def dbl_dataset_constants(self) -> tuple[float, float]:
        """(neg_scale, map_mu) the dataset declares (``DBL_NEG_SCALE``, ``DBL_MAP_MU``), else the DB loss's defaults."""
        dataset = self.dm.dataset
        neg_scale = getattr(dataset, "DBL_NEG_SCALE", None)
        map_mu = getattr(dataset, "DBL_MAP_MU", None)
        if neg_scale is None or map_mu is None:
            logger.info(f"{type(dataset).__name__} declares no DB-loss constants (DBL_NEG_SCALE, DBL_MAP_MU); "
                        f"defaults {DBL_DEFAULT_NEG_SCALE} / {DBL_DEFAULT_MAP_MU} unless TRAINER.LMPT.DBL sets them")
        return (DBL_DEFAULT_NEG_SCALE if neg_scale is None else float(neg_scale),
                DBL_DEFAULT_MAP_MU if map_mu is None else float(map_mu))

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module):
        """SGD etc. from ``cfg.OPTIM``; ReduceLROnPlateau (max mode, on the val mAP) when ``PLATEAU.ENABLED``."""
        optim = build_optimizer(module, self.cfg.OPTIM)
        node = self.cfg.TRAINER.LMPT.PLATEAU
        if not node.ENABLED:
            return optim, build_lr_scheduler(optim, self.cfg.OPTIM)
        # The engine steps it with each epoch's val mAP (and validates every epoch because it exists).
        return optim, ReduceLROnPlateau(optim, mode="max", factor=node.FACTOR, patience=node.PATIENCE,
                                        min_lr=node.MIN_LR)

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch) -> dict[str, float]:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            logits, prompts = self.model.forward_with_prompts(image)
        rows = [logits.float(), label]  # losses in fp32
        if self.cse_loss is not None:
            captions = self.model.embed_captions(self.caption_tokens[batch["index"]].to(self.device))  # (B, 77, D)
            rows.append(self.cse_loss.entries(captions, prompts, label))  # (B, n_cls)
        # Under torchrun the losses see the global batch (the DB loss's batch-level focal factor is not a mean of
        # per-rank terms); one process gets its tensors back unchanged.
        rows = gather_rows(rows)
        loss_cls = self.cls_loss(rows[0], rows[1])
        summary = {"loss_cls": loss_cls.item()}
        loss = loss_cls
        if self.cse_loss is not None:
            loss_cse = rows[2].mean()
            lam = self.cfg.TRAINER.LMPT.LAM
            loss = lam * loss_cls + (1 - lam) * loss_cse
            summary["loss_cse"] = loss_cse.item()
        self.backward_and_update(self.distributed_loss_scale(loss))
        return {"loss": loss.item(), **summary}

    @staticmethod
    def distributed_loss_scale(loss: Tensor) -> Tensor:
        """``loss`` times the world size under torchrun: each rank's gradient flows through its own rows of the
        global batch only, and the engine averages the ranks' gradients, so the scaled sum is the gradient of
        the global-batch loss.  One process: ``loss`` itself."""
        world_size = get_world_size()
        return loss * world_size if world_size > 1 else loss
