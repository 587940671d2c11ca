"""``ClipPromptTrainer``: everything a CLIP prompt-learning trainer shares, written once.

CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", arXiv:2109.01134) and CoCoOp
("Conditional Prompt Learning for Vision-Language Models", arXiv:2203.05557) repeat the same trainer code
(loading CLIP, precision, freezing, the AMP step, checkpoint filtering); here it is one base class:

- ``check_cfg``: ``TRAINER.<NODE>.PREC`` in fp16/fp32/amp, a loadable ``MODEL.BACKBONE.NAME``, a matching
  ``INPUT.SIZE`` and, for open_clip backbones, matching ``INPUT.PIXEL_MEAN``/``PIXEL_STD`` — before CLIP loads.
- ``build_model``: load CLIP on the CPU, apply the precision (fp16 -> fp32 with a warning on a CPU), call the
  subclass's ``build_custom_clip(clip_model, classnames)``, freeze every parameter outside the submodules named
  in ``LEARNABLE``, keep their parameters in fp32 (master weights, also under fp16), optionally load
  ``MODEL.INIT_WEIGHTS``, and register each with its own optimizer and scheduler (so each is switched
  train/eval, saved and loaded by name).
- ``forward_backward``: one step around ``forward_train`` and ``compute_loss`` under ``autocast()``; the engine's
  ``backward_and_update`` checks the loss, steps the optimizers and, under amp, goes through ``GradScaler``.
- ``load_model``: drops the frozen class-name buffers of old-style checkpoints, then loads strictly.
- ``test``: with ``EVAL_FROM_IMAGE_FEATURES`` (frozen, un-prompted image tower), the split's images are encoded
  once — or loaded from the on-disk ``FeatureCache`` (``TEST.FEATURE_CACHE``) — and the logits are computed from
  those features in batches; otherwise Dassl's image-by-image loop.

A method subclasses it like this::

    @TRAINER_REGISTRY.register()
    class MyMethod(ClipPromptTrainer):
        LEARNABLE = ("prompt_learner",)        # attribute paths in the custom CLIP; all else is frozen

        def check_cfg(self, cfg):
            super().check_cfg(cfg)             # reads cfg.TRAINER.MYMETHOD.PREC
            ...                                # one-line typed errors for the method's own keys

        def build_custom_clip(self, clip_model, classnames):
            learner = MyPromptLearner(classnames, clip_model, ...)
            return PromptCLIP(learner, self.make_text_encoder(clip_model), clip_model)

        def compute_loss(self, output, label):  # optional; default cross-entropy on logits
            ...

Cached evaluation: a method whose image features do not depend on anything learned sets
``EVAL_FROM_IMAGE_FEATURES = True``; its model must then be a ``CustomCLIP`` (``custom_clip.py``), whose
``logits_from_image_features(encode_image(x)) == forward(x)``.
"""
from __future__ import annotations

import contextlib
import logging
import os.path as osp
from typing import Any, ClassVar, ContextManager, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dassl.config import register_cfg_defaults
from dassl.engine import TrainerX
from dassl.engine.checkpoints import CheckpointMismatchError, check_state_dict_fits  # noqa: F401
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (all_gather_object, is_distributed, is_main_process, load_checkpoint, load_pretrained_weights,
                         progress)

from .clip_loading import PRECISIONS, cast_clip, cast_learnable, check_input_size, check_pixel_stats, \
    load_clip_to_cpu, resolve_backbone, resolve_precision
from .custom_clip import CustomCLIP
from .feature_cache import FeatureCache, items_digest, module_digest
from .text_encoder import TextEncoder

logger = logging.getLogger(__name__)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    """Keys shared by every CLIP prompt trainer."""
    # Crop the text transformer's input to the batch's last EOT position + 1: exact under causal attention
    # (trainers/common/text_encoder.py) and faster; False runs all 77 positions, literally as CoOp does
    cfg.MODEL.TEXT_ENCODER_TRUNCATE = True


# Images scored per call in cached evaluation when the class text features are shared by all images.
SHARED_TEXT_CHUNK = 4096


class ClipPromptTrainer(TrainerX):
    """Base trainer for methods that adapt a frozen CLIP through a few learnable submodules.

    Class attributes:
        LEARNABLE: attribute paths (``get_submodule`` names) in the custom CLIP that are trained, registered,
            checkpointed and loaded; every other parameter is frozen.  ``()`` means nothing is trained
            (zero-shot).
        CFG_NODE: the ``TRAINER.<CFG_NODE>`` subtree holding ``PREC``; "" means the class name upper-cased.
        FROZEN_BUFFERS: state-dict key names (last dotted component) dropped before loading a checkpoint:
            CoOp-era checkpoints carry the class-name embeddings, which we rebuild for the current classes.
        EVAL_FROM_IMAGE_FEATURES: ``test`` encodes each split's images once (cached on disk across runs) and
            computes logits from the features; only for methods whose image features are frozen and un-prompted
            (see the module docstring for what the custom CLIP must provide).

    Hooks a method overrides (all optional except ``build_custom_clip``):
        ``check_cfg(cfg)``, ``build_custom_clip(clip_model, classnames)``, ``forward_train(image, label)``,
        ``compute_loss(output, label)``, ``loss_summary(output, label, loss)``,
        ``build_optimizer_and_scheduler(name, module)``.  Helpers: ``method_cfg()``, ``make_text_encoder(clip)``,
        ``autocast()``, ``backward_and_update(loss)``, ``fp32_master_weights()``; attributes ``precision``
        (resolved) and ``scaler``.
    """

    LEARNABLE: ClassVar[Sequence[str]] = ("prompt_learner",)
    CFG_NODE: ClassVar[str] = ""
    FROZEN_BUFFERS: ClassVar[Sequence[str]] = ("token_prefix", "token_suffix")
    EVAL_FROM_IMAGE_FEATURES: ClassVar[bool] = False

    precision: str = "fp32"
    scaler: Optional[torch.amp.GradScaler] = None

    # ------------------------------------------------------------------ config
    @classmethod
    def cfg_node_name(cls) -> str:
        """Name of the method's config subtree under ``TRAINER``."""
        return cls.CFG_NODE or cls.__name__.upper()

    def method_cfg(self, cfg=None):
        """The ``TRAINER.<CFG_NODE>`` subtree of ``cfg`` (default: ``self.cfg``)."""
        cfg = self.cfg if cfg is None else cfg
        name = self.cfg_node_name()
        if name not in cfg.TRAINER:
            raise KeyError(f"config has no TRAINER.{name}; define it in the method's add_cfg_defaults")
        return cfg.TRAINER[name]

    def check_cfg(self, cfg) -> None:
        """Precision, backbone and input size; subclasses add their own keys and call ``super().check_cfg``."""
        prec = self.method_cfg(cfg).PREC
        if prec not in PRECISIONS:
            raise ValueError(f"TRAINER.{self.cfg_node_name()}.PREC={prec!r}; choose one of {', '.join(PRECISIONS)}")
        if not cfg.MODEL.BACKBONE.NAME:
            raise ValueError(f"MODEL.BACKBONE.NAME is empty; {type(self).__name__} needs a CLIP backbone "
                             "(e.g. --backbone ViT-B/16 or a configs/trainers/ YAML)")
        resolve_backbone(cfg.MODEL.BACKBONE.NAME)
        check_input_size(cfg.MODEL.BACKBONE.NAME, cfg.INPUT.SIZE)
        check_pixel_stats(cfg.MODEL.BACKBONE.NAME, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)

    # ------------------------------------------------------------------ model
    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        """Return the method's model: ``images -> logits`` (or whatever ``compute_loss`` expects in training).

        ``clip_model`` is on the CPU, in eval mode and already in the run's precision; the trainer moves
        the returned module to the device and freezes everything outside ``LEARNABLE``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_custom_clip(clip_model, classnames)")

    def make_text_encoder(self, clip_model: nn.Module) -> TextEncoder:
        """The shared text tower, with EOT truncation from ``MODEL.TEXT_ENCODER_TRUNCATE``."""
        return TextEncoder(clip_model, truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = resolve_precision(self.method_cfg().PREC, self.device)
        logger.info(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = cast_clip(load_clip_to_cpu(cfg.MODEL.BACKBONE.NAME,
                                                trust_local_archive=cfg.MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE),
                               self.precision)
        check_input_size(cfg.MODEL.BACKBONE.NAME, cfg.INPUT.SIZE, clip_model.visual.input_resolution)
        logger.info(f"Building custom CLIP ({type(self).__name__}, {self.precision})")
        self.model = self.build_custom_clip(clip_model, classnames)
        learnable = self.freeze_all_but_learnable(self.model)
        for module in learnable.values():
            cast_learnable(module, clip_model, fp32_master=self.fp32_master_weights())
        if cfg.MODEL.INIT_WEIGHTS:
            if not learnable:
                raise ValueError(f"MODEL.INIT_WEIGHTS is set but {type(self).__name__} has nothing to load it into")
            load_pretrained_weights(next(iter(learnable.values())), cfg.MODEL.INIT_WEIGHTS)
        self.model.eval()  # frozen towers stay in eval mode; registered modules get train() every epoch
        self.model.to(self.device)
        for name, module in learnable.items():
            optim, sched = self.build_optimizer_and_scheduler(name, module)
            self.register_model(name, module, optim, sched)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" else None

    def fp32_master_weights(self) -> bool:
        """Keep learnable parameters in fp32 under fp16 (default); ``False`` = the reference's half weights."""
        return True

    def freeze_all_but_learnable(self, model: nn.Module) -> dict[str, nn.Module]:
        """Set ``requires_grad`` only under the ``LEARNABLE`` paths; return those modules by name."""
        learnable = {}
        for name in self.LEARNABLE:
            try:
                learnable[name] = model.get_submodule(name)
            except AttributeError as err:
                raise AttributeError(f"{type(self).__name__}.LEARNABLE names {name!r}, which is not a submodule "
                                     f"of {type(model).__name__}; fix LEARNABLE or build_custom_clip") from err
        prefixes = tuple(f"{name}." for name in self.LEARNABLE)
        trainable = []
        for param_name, param in model.named_parameters():
            param.requires_grad_(param_name.startswith(prefixes))
            if param.requires_grad:
                trainable.append(param_name)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"Turning off gradients outside {list(self.LEARNABLE)}: {n_params:,} learnable parameters")
        logger.debug(f"Parameters to be updated: {sorted(trainable)}")
        return learnable

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module) -> tuple[Any, Any]:
        """Optimizer and scheduler for one learnable module (default: Dassl's from ``cfg.OPTIM``)."""
        optim = build_optimizer(module, self.cfg.OPTIM)
        return optim, build_lr_scheduler(optim, self.cfg.OPTIM)

    # ------------------------------------------------------------------ training step
    def parse_batch_train(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def autocast(self) -> ContextManager:
        """fp16 autocast under amp (CUDA), a no-op otherwise."""
        if self.precision == "amp":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def forward_train(self, image: Tensor, label: Tensor) -> Any:
        """The training forward; default ``self.model(image)`` (logits)."""
        return self.model(image)

    def compute_loss(self, output: Any, label: Tensor) -> Tensor:
        """Training loss of ``forward_train``'s output; default cross-entropy on logits."""
        return F.cross_entropy(output, label)

    def loss_summary(self, output: Any, label: Tensor, loss: Tensor) -> dict[str, float]:
        """Meters for the progress line: ``loss`` and, when the output is logits, top-1 ``acc``."""
        summary = {"loss": loss.item()}
        if isinstance(output, Tensor) and output.dim() == 2:
            summary["acc"] = compute_accuracy(output, label)[0].item()
        return summary

    def forward_backward(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.forward_train(image, label)
            loss = self.compute_loss(output, label)
        self.backward_and_update(loss)
        return self.loss_summary(output, label, loss)

    # ------------------------------------------------------------------ checkpoints
    def drop_frozen_buffers(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` without the ``FROZEN_BUFFERS`` entries (matched on the last dotted component)."""
        return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in self.FROZEN_BUFFERS}

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load ``<directory>/<name>/model.pth.tar-<epoch>`` (or ``model-best.pth.tar``) into each learnable module.

        The class-name buffers are dropped (they belong to the classes the checkpoint was trained on), then
        the rest loads strictly: a missing, unexpected or mis-shaped key is a ``CheckpointMismatchError`` naming
        them, not a silent skip.
        """
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                hint = "pass --load-epoch" if epoch is None else "check --model-dir and --load-epoch"
                raise FileNotFoundError(f'Model not found at "{model_path}"; {hint}')
            checkpoint = load_checkpoint(model_path)
            state_dict = self.drop_frozen_buffers(checkpoint["state_dict"])
            logger.info(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            check_state_dict_fits(self._models[name], state_dict, model_path)
            self._models[name].load_state_dict(state_dict, strict=True)

    # ------------------------------------------------------------------ evaluation from image features
    def feature_eval_enabled(self) -> bool:
        """Whether ``test`` evaluates from (cached) image features: opted in, enabled, single process, frozen."""
        if not self.EVAL_FROM_IMAGE_FEATURES or not self.cfg.TEST.FEATURE_CACHE.ENABLED:
            return False
        if not isinstance(self.model, CustomCLIP):
            raise TypeError(f"{type(self).__name__}.EVAL_FROM_IMAGE_FEATURES is set but {type(self.model).__name__} "
                            "is not a CustomCLIP (trainers/common/custom_clip.py); derive from it or unset the flag")
        if any(p.requires_grad for p in self.model.image_encoder.parameters()):
            logger.warning(f"{type(self).__name__}: the image encoder has trainable parameters; not caching features")
            return False
        return True

    def image_feature_key(self, split: str, data_source: Sequence) -> str:
        """Cache key: backbone name, image-encoder weights, dataset, split, ordered (impath, label) list and test
        transform."""
        image_digest = items_digest([item.impath for item in data_source], [item.label for item in data_source])
        return FeatureCache.make_key(module_digest(self.model.image_encoder), self.cfg.DATASET.NAME, split,
                                     image_digest, repr(self.dm.tfm_test), backbone=self.cfg.MODEL.BACKBONE.NAME)

    @torch.no_grad()
    def encode_split(self, split: str, data_loader) -> tuple[Tensor, Tensor]:
        """Normalised image features ``(N, E)`` and labels of a whole split, in dataset order, on the CPU.

        Under torchrun each rank encodes its contiguous block of the split and the blocks are gathered in
        rank order, so every rank returns the whole split.
        """
        features, labels = [], []
        for batch in progress(data_loader, f"encode {split}", enabled=is_main_process()):
            image, label = self.parse_batch_test(batch)
            features.append(self.model.encode_image(image).cpu())
            labels.append(label.cpu())
        local = (torch.cat(features) if features else None, torch.cat(labels) if labels else None)
        if not is_distributed():
            return local
        blocks = [block for block in all_gather_object(local) if block[0] is not None]
        return torch.cat([f for f, _ in blocks]), torch.cat([y for _, y in blocks])

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Dassl's ``test``; from (cached) image features when ``feature_eval_enabled()``."""
        if not self.feature_eval_enabled():
            return super().test(split)
        self.set_model_mode("eval")
        self.evaluator.reset()
        split, data_loader, data_source = self.eval_split(split)
        logger.info(f"Evaluate on the *{split}* set")
        cache = FeatureCache(self.cfg.TEST.FEATURE_CACHE.DIR)
        features, labels = cache.get_or_compute(self.image_feature_key(split, data_source),
                                                lambda: self.encode_split(split, data_loader))
        # Models whose class text features do not depend on the image (CoOp, zero-shot) score the whole
        # split in a few large chunks: their text tower then runs a few times instead of once per batch.
        batch_size = self.cfg.DATALOADER.TEST.BATCH_SIZE if self.model.per_image_text else SHARED_TEXT_CHUNK
        for feats, label in zip(features.split(batch_size), labels.split(batch_size)):
            output = self.model.logits_from_image_features(feats.to(self.device))  # (b, n_cls)
            self.evaluator.process(output, label.to(self.device))
        results = self.evaluator.evaluate()
        self.write_results(split, results)
        return list(results.values())[0]
