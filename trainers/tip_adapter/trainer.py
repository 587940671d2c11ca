"""Tip-Adapter and Tip-Adapter-F: a key-value cache of the few-shot training features added to zero-shot CLIP.

Zhang, Zhang, Fang, Gao, Li, Dai, Qiao, Li, "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022, arXiv:2207.09519 (first version: "Tip-Adapter: Training-free CLIP-Adapter for
Better Vision-Language Modeling", arXiv:2111.03930).  Reference implementation: gaopengcuhk/Tip-Adapter@d0e2d6f
(``main.py``, ``main_imagenet.py``, ``utils.py``, ``configs/*.yaml``).

Tip-Adapter (training-free) stores the few-shot training images as a cache: the keys are their L2-normalised
CLIP features, averaged over ``AUGMENT_EPOCH`` augmented views, the values their one-hot labels.  A test image's
logits are zero-shot CLIP's plus ``alpha`` times the values weighted by ``exp(-beta (1 - cosine))`` to every key
(``cache_model.py``); ``alpha`` and ``beta`` are chosen by a grid search on the validation images.
Tip-Adapter-F also trains the keys (AdamW, cosine schedule per iteration) with cross-entropy at the initial
alpha/beta, then searches alpha/beta for the trained keys.  Everything either needs at test time is in the
``cache`` checkpoint.  Differences from the reference: docs/methods/tip_adapter.md.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.data.data_manager import build_data_loader
from dassl.engine import TRAINER_REGISTRY, TrainingPass
from dassl.optim import build_optimizer
from dassl.utils import broadcast_object, is_main_process

from ..common.custom_clip import CustomCLIP
from ..common.frozen_features import FrozenFeatureTrainer, untouched_rng
from ..common.templates import dataset_templates
from ..common.text_features import class_text_features
from .cache_model import TipCache, keys_from_views, search_alpha_beta, search_grid
from .views import encode_views, views_key

logger = logging.getLogger(__name__)

TRAIN_VIEW_MODES = ("fresh", "cached")


def add_cache_keys(node: CN) -> None:
    """Keys that Tip-Adapter and Tip-Adapter-F share (each under its own node)."""
    # fp16 (the reference: CLIP loaded on CUDA in half), fp32 or amp; fp16/amp fall back to fp32 on a CPU (warned).
    # The cache itself is computed in fp32.
    node.PREC = "fp16"
    # Augmented passes over the training images whose features are averaged into the keys (augment_epoch)
    node.AUGMENT_EPOCH = 10
    # alpha (weight of the cache logits) and beta (sharpness of the affinity) before/without the search
    node.INIT_ALPHA = 1.0
    node.INIT_BETA = 1.0
    # Search alpha/beta on the val split (search_hp); False keeps INIT_ALPHA/INIT_BETA (the reference crashes)
    node.SEARCH_HP = True
    # Grid ends (beta, alpha): values i (scale - 0.1) / steps + 0.1, i < steps (search_scale, per dataset)
    node.SEARCH_SCALE = (7.0, 3.0)
    # Grid sizes (beta, alpha) (search_step)
    node.SEARCH_STEP = (200, 20)
    # Scale of the zero-shot logits: the reference's literal 100 (= exp(logit_scale) of the released CLIPs);
    # 0 uses the loaded model's exp(logit_scale)
    node.CLIP_LOGIT_SCALE = 100.0


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.TIPADAPTER = CN()
    add_cache_keys(cfg.TRAINER.TIPADAPTER)
    cfg.TRAINER.TIPADAPTER_F = CN()
    add_cache_keys(cfg.TRAINER.TIPADAPTER_F)
    # AdamW's eps (the reference: 1e-4, for its fp16 keys); used when OPTIM.NAME is adamw
    cfg.TRAINER.TIPADAPTER_F.ADAM_EPS = 1e-4
    # Training features per epoch: "fresh" encodes newly augmented images every epoch, as the reference does;
    # "cached" trains epoch e on the cached augmented view e mod AUGMENT_EPOCH (no image-tower pass in training)
    cfg.TRAINER.TIPADAPTER_F.TRAIN_VIEWS = "fresh"
    # True: keep the epoch with the best TEST accuracy and report the better test accuracy of the initial and the
    # searched alpha/beta, literally as the reference does (test labels choose the model); False: the last epoch
    # and the searched alpha/beta
    cfg.TRAINER.TIPADAPTER_F.SELECT_EPOCH_ON_TEST = False
    # True keeps the trained keys in fp32 under PREC fp16; False = the reference's fp16 keys
    cfg.TRAINER.TIPADAPTER_F.FP32_MASTER_WEIGHTS = True


class TipAdapterModel(CustomCLIP):
    """Zero-shot CLIP (fixed class text features ``(C, E)``) plus a ``TipCache``."""

    per_image_text = False  # the text features are the same for every image

    def __init__(self, clip_model: nn.Module, text_features: Tensor, cache: TipCache, clip_scale: float) -> None:
        super().__init__(clip_model)
        self.cache = cache
        self.clip_scale = clip_scale
        self.register_buffer("text_features", text_features, persistent=False)  # (C, E), normalised

    def clip_logits(self, image_features: Tensor) -> Tensor:
        f = image_features.to(self.cache.keys.dtype)
        return self.clip_scale * f @ self.text_features.to(f.dtype).t()  # (B, C)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        f = image_features.to(self.cache.keys.dtype)
        return self.clip_logits(f) + self.cache(f)  # (B, C)


class FeatureBatches(Dataset):
    """Cached training features as a dataset of ``{"feat", "label"}`` (keys may carry an augmentation seed)."""

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        return {"feat": self.features[index], "label": self.labels[index]}


@TRAINER_REGISTRY.register()
class TipAdapter(FrozenFeatureTrainer):
    """Tip-Adapter (training-free): cache built and alpha/beta searched in the first epoch.

    "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", https://arxiv.org/abs/2207.09519
    """

    LEARNABLE = ("cache",)
    CFG_NODE = "TIPADAPTER"

    def check_cfg(self, cfg) -> None:
        node = self.method_cfg(cfg)
        name = f"TRAINER.{self.cfg_node_name()}"
        if node.AUGMENT_EPOCH < 1:
            raise ValueError(f"{name}.AUGMENT_EPOCH={node.AUGMENT_EPOCH}; at least one view builds the keys")
        if len(node.SEARCH_SCALE) != 2 or len(node.SEARCH_STEP) != 2 or min(node.SEARCH_STEP) < 1:
            raise ValueError(f"{name}: SEARCH_SCALE={tuple(node.SEARCH_SCALE)} and SEARCH_STEP="
                             f"{tuple(node.SEARCH_STEP)} must each be two values (beta, alpha), steps >= 1")
        super().check_cfg(cfg)

    # ------------------------------------------------------------------ model
    def keeps_best_epoch(self) -> bool:
        return False

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.method_cfg()
        templates = dataset_templates(self.cfg.DATASET.NAME)
        logger.info(f"Prompt templates ({len(templates)}): {list(templates)}")
        clip_model.to(self.device)  # the text side runs once, on the run's device
        text_features = class_text_features(clip_model, classnames, templates,
                                            truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE).float()
        clip_scale = node.CLIP_LOGIT_SCALE or clip_model.logit_scale.exp().item()
        cache = TipCache(len(self.dm.split_items["train_x"]), clip_model.visual.output_dim, len(classnames),
                         node.INIT_ALPHA, node.INIT_BETA, keep_best=self.keeps_best_epoch())
        return TipAdapterModel(clip_model, text_features, cache, clip_scale)

    # ------------------------------------------------------------------ cache and search
    def fit(self) -> None:
        self.build_cache()
        self.search_hyperparameters()

    def view_seed(self) -> int:
        """Seed of the augmented views: the run's seed (a random one, drawn once, when SEED < 0)."""
        if self.cfg.SEED < 0 and not hasattr(self, "random_view_seed"):
            self.random_view_seed = broadcast_object(int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))
        return self.cfg.SEED if self.cfg.SEED >= 0 else self.random_view_seed

    def view_features(self) -> Tuple[Tensor, Tensor]:
        """Image-tower outputs ``(A, N, E)`` of the augmented training views and labels ``(N,)`` (cached)."""
        n_views, seed = self.method_cfg().AUGMENT_EPOCH, self.view_seed()
        items, transform = self.dm.split_items["train_x"], self.dm.tfm_train
        key = views_key(self.model.image_encoder, self.cfg.DATASET.NAME, items, transform, seed, n_views)
        with untouched_rng():
            return self.feature_cache().get_or_compute(
                key, lambda: encode_views(self.cfg, self.model, items, transform, seed, n_views, self.device))

    def build_cache(self) -> None:
        views, labels = self.view_features()
        logger.info(f"Cache model: {views.shape[1]} keys from the mean of {views.shape[0]} augmented views")
        self.model.cache.build(keys_from_views(views).to(self.device), labels.to(self.device))

    def count_correct(self, features: Tensor, labels: Tensor) -> int:
        """Images of ``features`` that the current model classifies right."""
        logits = self.model.logits_from_image_features(features.to(self.device))
        return int((logits.argmax(dim=1).cpu() == labels).sum())

    @torch.no_grad()
    def search_hyperparameters(self) -> None:
        """The reference's grid search on the val split (rank 0, broadcast); keeps INIT_* when SEARCH_HP is off."""
        node = self.method_cfg()
        if not node.SEARCH_HP:
            logger.info(f"SEARCH_HP is off: alpha {node.INIT_ALPHA}, beta {node.INIT_BETA}")
            return
        features, labels = self.split_features("val")
        result = self.grid_search(features, labels) if is_main_process() else None
        beta, alpha, correct = broadcast_object(result)
        self.model.cache.set_alpha_beta(alpha, beta)
        logger.info(f"After searching: beta {beta:.2f}, alpha {alpha:.2f}, val accuracy "
                    f"{100 * correct / len(labels):.2f}%")

    def grid_search(self, features: Tensor, labels: Tensor) -> Tuple[float, float, int]:
        node, cache = self.method_cfg(), self.model.cache
        features, labels = features.to(self.device).to(cache.keys.dtype), labels.to(self.device)
        clip_logits = self.model.clip_logits(features)
        zero_shot = int((clip_logits.argmax(dim=1) == labels).sum())
        logger.info(f"Zero-shot CLIP's val accuracy: {100 * zero_shot / len(labels):.2f}%; Tip-Adapter's at the "
                    f"initial alpha/beta: {100 * self.count_correct(features, labels.cpu()) / len(labels):.2f}%")
        betas = search_grid(node.SEARCH_SCALE[0], node.SEARCH_STEP[0])
        alphas = search_grid(node.SEARCH_SCALE[1], node.SEARCH_STEP[1])
        logger.info(f"Searching {len(betas)} betas x {len(alphas)} alphas on {len(labels)} val images")
        return search_alpha_beta(features, labels, clip_logits, cache.keys.detach(), cache.values, betas, alphas)


@TRAINER_REGISTRY.register()
class TipAdapter_F(TipAdapter):  # noqa: N801  (the paper's name)
    """Tip-Adapter-F: the cache keys fine-tuned, then alpha/beta searched for them.

    "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", https://arxiv.org/abs/2207.09519
    """

    CFG_NODE = "TIPADAPTER_F"

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.TIPADAPTER_F
        if node.TRAIN_VIEWS not in TRAIN_VIEW_MODES:
            raise ValueError(f"TRAINER.TIPADAPTER_F.TRAIN_VIEWS={node.TRAIN_VIEWS!r}; choose one of "
                             f"{', '.join(TRAIN_VIEW_MODES)}")
        if cfg.TEST.FINAL_MODEL != "last_step":
            raise ValueError(f"TEST.FINAL_MODEL={cfg.TEST.FINAL_MODEL!r}: TipAdapter_F searches alpha/beta after the "
                             "last epoch, so it needs last_step (the reference's test-set epoch choice is "
                             "TRAINER.TIPADAPTER_F.SELECT_EPOCH_ON_TEST True)")
        super().check_cfg(cfg)

    def keeps_best_epoch(self) -> bool:
        return self.cfg.TRAINER.TIPADAPTER_F.SELECT_EPOCH_ON_TEST

    def fp32_master_weights(self) -> bool:
        return self.cfg.TRAINER.TIPADAPTER_F.FP32_MASTER_WEIGHTS

    def build_data_manager(self):
        """The reference keeps the last, incomplete training batch (``drop_last=False``)."""
        dm = super().build_data_manager()
        dm.set_split("train_x", dm.split_items["train_x"], drop_last=False)
        return dm

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module) -> Tuple[Any, Any]:
        """AdamW with ``ADAM_EPS`` (or Dassl's ``OPTIM.NAME``); cosine annealing over every iteration of the run."""
        optim_cfg = self.cfg.OPTIM
        if optim_cfg.NAME == "adamw":
            optim = torch.optim.AdamW(module.parameters(), lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY,
                                      betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2),
                                      eps=self.cfg.TRAINER.TIPADAPTER_F.ADAM_EPS)
        else:
            optim = build_optimizer(module, optim_cfg)
        total_iters = self.max_epoch * len(self.train_loader_x)
        return optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, total_iters)

    def lr_step_policy(self) -> str:
        return "iter"  # the reference steps its cosine schedule after every batch

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        """The first epoch builds the cache; alpha/beta are searched after the last one."""
        self.build_cache()

    def training_passes(self):
        self.fit_once()
        yield TrainingPass(self.epoch_loader(), self.forward_backward)

    def epoch_loader(self):
        """``train_loader_x``, or with ``TRAIN_VIEWS cached`` the epoch's cached view in the same batches."""
        if self.cfg.TRAINER.TIPADAPTER_F.TRAIN_VIEWS == "fresh":
            return self.train_loader_x
        if not hasattr(self, "cached_views"):
            self.cached_views = self.view_features()
        views, labels = self.cached_views
        view = views[self.epoch % len(views)]
        items, batch = self.dm.split_items["train_x"], self.cfg.DATALOADER.TRAIN_X
        return build_data_loader(self.cfg, sampler_type=batch.SAMPLER, data_source=items, batch_size=batch.BATCH_SIZE,
                                 is_train=True, dataset_wrapper=lambda *args, **kwargs: FeatureBatches(view, labels),
                                 drop_last=False)

    def parse_batch_train(self, batch) -> Tuple[Tensor, Tensor]:
        inputs = batch["feat"] if "feat" in batch else batch["img"]
        return inputs.to(self.device), batch["label"].to(self.device)

    def forward_train(self, inputs: Tensor, label: Tensor) -> Tensor:
        """Logits at the current alpha/beta (the initial ones during training) for images or cached features."""
        if inputs.dim() == 2:  # cached view: image-tower outputs (B, E), not yet normalised
            features = inputs / inputs.norm(dim=-1, keepdim=True)
        else:
            with torch.no_grad():
                features = self.model.encode_image(inputs)  # (B, E), normalised
        return self.model.logits_from_image_features(features)

    # ------------------------------------------------------------------ after each epoch
    @torch.no_grad()
    def end_of_epoch(self) -> None:
        if self.keeps_best_epoch():
            self.track_best_test_epoch()
        if self.epoch + 1 == self.max_epoch or self.stop_requested:
            self.finish_training()

    def track_best_test_epoch(self) -> None:
        """Reference epoch selection: remember the keys of the epoch with the best test accuracy so far."""
        cache = self.model.cache
        correct = self.count_correct(*self.split_features("test"))
        logger.info(f"Epoch {self.epoch + 1}: test accuracy at the initial alpha/beta: {correct} correct")
        if correct > cache.best_correct.item():
            cache.best_correct.fill_(correct)
            cache.best_keys.copy_(cache.keys)

    def finish_training(self) -> None:
        """Search alpha/beta for the trained keys (with the reference's test-set choices when asked)."""
        cache = self.model.cache
        if self.keeps_best_epoch():
            cache.keys.copy_(cache.best_keys)
        init = (cache.alpha.item(), cache.beta.item())
        self.search_hyperparameters()
        if self.keeps_best_epoch():
            searched = self.count_correct(*self.split_features("test"))
            if searched < cache.best_correct.item():  # the reference reports max(best epoch's, searched) accuracy
                cache.set_alpha_beta(*init)
                logger.info("The initial alpha/beta score higher on test than the searched ones; keeping them")
