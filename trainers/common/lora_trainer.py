"""``LoRATrainer``: LoRA fine-tuning of both CLIP towers, the base of CLIP-LoRA and DISEF.

CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", arXiv:2405.18541;
reference MaxZanella/CLIP-LoRA@358f0d7) and DISEF (Turrisi da Costa et al., "Diversified in-domain synthesis with
efficient fine-tuning for few-shot classification", arXiv:2312.03046; reference vturrisi/disef@501ec4b) train the
same model: CLIP with LoRA in the attention of the chosen blocks (``clip/lora.py``), class prompts re-encoded by
the adapted text tower at every step (one template, or the mean of several), logits ``scale * cos(image, text)``.
This base holds that model and its config keys (``lora_cfg_node``), registers and checkpoints only the A/B
tensors, counts CLIP-LoRA's iteration budget with a per-iteration cosine (or Dassl's per-epoch schedules), builds
the transforms the recipes need, stops early on the validation accuracy and writes ``lora_weights.pt`` in
CLIP-LoRA's format.  The deliberate differences from the references are listed in docs/methods/clip_lora.md.
"""
from __future__ import annotations

import json
import logging
import math
import os
import os.path as osp
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, RandAugment, Resize, ToTensor
from yacs.config import CfgNode as CN

from dassl.data.transforms import INTERPOLATION_MODES, build_transform
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import broadcast_object, is_main_process
from vlprompt import clip
from vlprompt.clip.clip import OPENAI_MEAN, OPENAI_STD
from vlprompt.clip.lora import ENCODERS, POSITIONS, PROJECTIONS, SCALINGS, LoRAWeights, apply_lora, lora_specs, \
    save_lora

from .custom_clip import CustomCLIP, l2_normalize
from .prompt_trainer import ClipPromptTrainer
from .templates import dataset_template, dataset_templates
from .text_encoder import TextEncoder

logger = logging.getLogger(__name__)

LORA_PRECISIONS = ("fp32", "amp")  # fp16 is refused: AdamW on half-precision A/B underflows
LR_STEPS = ("iter", "epoch")
EARLY_STOP_FILE = "early_stopping.json"  # in OUTPUT_DIR: lets a resumed run keep the patience counter
LORA_FILE = "lora_weights.pt"  # CLIP-LoRA's default file name


def lora_cfg_node(**overrides: Any) -> CN:
    """The LoRA trainer keys with CLIP-LoRA's defaults; ``overrides`` set a method's own defaults."""
    node = CN()
    # fp32 or amp (CLIP-LoRA: fp16 autocast + GradScaler); amp falls back to fp32 on a CPU
    node.PREC = "amp"
    # Towers that get LoRA: text, vision or both
    node.ENCODER = "both"
    # Adapted projections in each chosen block: a subset of q, k, v, o (o = attention output projection)
    node.PARAMS = ["q", "k", "v"]
    # Chosen blocks: all, bottom, mid, up, half-bottom, half-up, top3 (thirds/halves of the depth)
    node.POSITION = "all"
    # LoRA rank of both towers; TEXT_R / VISION_R > 0 override it per tower (DISEF: 16 / 64)
    node.R = 2
    node.TEXT_R = 0
    node.VISION_R = 0
    # LoRA alpha; the update is scaled by ALPHA / sqrt(R) ("sqrt", CLIP-LoRA) or ALPHA / R ("linear", loralib)
    node.ALPHA = 1.0
    node.SCALING = "sqrt"
    # Dropout on the LoRA branch input (training only)
    node.DROPOUT = 0.25
    # True: one dropout mask on the attention input, shared by the adapted q/k/v projections (loralib's
    # MergedLinear: DISEF and the seed notebook); False: each projection draws its own mask (CLIP-LoRA)
    node.SHARED_DROPOUT = False
    # > 0: train ITERS_PER_SHOT x DATASET.NUM_SHOTS iterations (CLIP-LoRA: 500); 0: OPTIM.MAX_EPOCH epochs
    node.ITERS_PER_SHOT = 500
    # iter: cosine from OPTIM.LR to ETA_MIN over all iterations, stepped every iteration (CLIP-LoRA, DISEF);
    # epoch: OPTIM.LR_SCHEDULER stepped once per epoch (the seed notebook)
    node.LR_STEP = "iter"
    node.ETA_MIN = 1e-6
    # > 0: fixed logit scale (CLIP-LoRA: 100); <= 0: exp(CLIP's logit_scale)
    node.LOGIT_SCALE = 100.0
    # Class prompt, "{}" = class name; "" = the dataset's template (its TEMPLATE attribute)
    node.TEMPLATE = "a photo of a {}."
    # With TEMPLATE "": True uses the dataset's TEMPLATES list (ImageNet 7, SUN397 2, StanfordCars 8, CIFAR-100 18;
    # others their one TEMPLATE) and a class's text feature is the mean of its L2-normalised per-template features,
    # renormalised (DISEF); False: the dataset's single TEMPLATE
    node.AVERAGE_TEMPLATES = False
    # Cross-entropy label smoothing (DISEF: 0.1)
    node.LABEL_SMOOTHING = 0.0
    # True: training and test images both go through CLIP's own preprocessing (shorter side to INPUT.SIZE,
    # bicubic, centre crop, CLIP's mean/std; no augmentation), as the seed notebook; INPUT.TRANSFORMS is ignored
    node.CLIP_PREPROCESS = False
    # > 0: test images are resized (shorter side) to TEST_RESIZE, then centre-cropped to INPUT.SIZE (DISEF: 256);
    # 0: Dassl's test transform (shorter side to INPUT.SIZE)
    node.TEST_RESIZE = 0
    # > 0: torchvision RandAugment with this many ops before Dassl's training transform (DISEF's augment=True:
    # 2 ops of magnitude 9), on real and synthetic images; 0: off
    node.RANDAUGMENT_OPS = 0
    node.RANDAUGMENT_MAGNITUDE = 9
    # > 0: stop after PATIENCE epochs without a better val accuracy (needs TEST.FINAL_MODEL best_val); 0: off
    node.PATIENCE = 0
    # True: stop only after PATIENCE + 1 such epochs, as the seed notebook does
    node.PATIENCE_LITERAL = False
    for key, value in overrides.items():
        if key not in node:
            raise KeyError(f"lora_cfg_node: unknown key {key}; known keys: {sorted(node)}")
        node[key] = value
    return node


def to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def clip_preprocess(size: int) -> Compose:
    """CLIP's own evaluation transform: shorter side to ``size`` (bicubic), centre crop, CLIP's mean/std."""
    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size), to_rgb, ToTensor(),
                    Normalize(OPENAI_MEAN, OPENAI_STD)])


def resize_crop_transform(resize: int, crop: Sequence[int], interpolation: str, mean: Sequence[float],
                          std: Sequence[float]) -> Compose:
    """Shorter side to ``resize``, centre crop to ``crop``, normalise (DISEF's test transform: 256 -> 224)."""
    return Compose([Resize(resize, interpolation=INTERPOLATION_MODES[interpolation]), CenterCrop(tuple(crop)),
                    ToTensor(), Normalize(mean, std)])


class IterationBudgetLoader:
    """The train loader cut so that all epochs together yield ``total`` batches.

    Epoch ``e`` (read from ``epoch_fn``, so a resumed run agrees) yields ``min(n, total - e * n)`` of the ``n``
    batches.  Under torchrun ``n`` counts global batches, so every rank runs the same number of steps.
    """

    def __init__(self, loader, total: int, epoch_fn) -> None:
        self.loader, self.total, self.epoch_fn = loader, total, epoch_fn

    def __len__(self) -> int:
        per_epoch = len(self.loader)
        return max(0, min(per_epoch, self.total - self.epoch_fn() * per_epoch))

    def __iter__(self) -> Iterator[Any]:
        remaining = len(self)
        if remaining == 0:
            return
        for index, batch in enumerate(self.loader):
            yield batch
            if index + 1 >= remaining:
                return


class LoRACLIP(CustomCLIP):
    """``images (B, 3, R, R) -> logits (B, n_cls)`` of a CLIP whose attention carries LoRA.

    ``lora`` holds the A/B tensors (the only trainable ones, registered first); the towers are CLIP's own
    modules with ``LoRAMultiheadAttention`` inside.  ``tokenized_prompts`` holds ``n_templates`` prompts per class,
    class-major; several templates are averaged after normalisation.
    """

    per_image_text = False

    def __init__(self, lora: LoRAWeights, clip_model: nn.Module, tokenized_prompts: Tensor, n_templates: int = 1,
                 truncate_at_eot: bool = True, logit_scale: float = 100.0) -> None:
        super().__init__(clip_model)
        self.lora = lora
        # A/B tensors also live inside the towers; listed first, their parameter names are "lora.*".
        self._modules = {"lora": self._modules.pop("lora"), **self._modules}
        self.text_encoder = TextEncoder(clip_model, truncate_at_eot=truncate_at_eot)
        self.token_embedding = clip_model.token_embedding
        self.fixed_logit_scale = logit_scale
        self.n_templates = n_templates
        self.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)  # (n_cls * T, 77)

    def scale(self) -> Tensor:
        """The fixed scale (> 0) or ``exp(logit_scale)`` of CLIP."""
        if self.fixed_logit_scale > 0:
            return torch.tensor(self.fixed_logit_scale, device=self.tokenized_prompts.device)
        return self.logit_scale.exp()

    def encode_text(self) -> Tensor:
        """L2-normalised class text features ``(n_cls, E)`` through the (adapted) text tower."""
        embeddings = self.token_embedding(self.tokenized_prompts).to(self.dtype)  # (n_cls * T, 77, D)
        features = l2_normalize(self.text_encoder(embeddings, self.tokenized_prompts))  # (n_cls * T, E)
        if self.n_templates == 1:
            return features
        per_template = features.view(-1, self.n_templates, features.shape[-1])  # (n_cls, T, E)
        return l2_normalize(per_template.mean(dim=1))  # (n_cls, E)

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        return self.scale() * image_features @ text_features.t().to(image_features.dtype)  # (B, n_cls)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return self.logits(image_features, self.encode_text())

    def forward(self, image: Tensor, text_features: Optional[Tensor] = None) -> Tensor:
        text_features = self.encode_text() if text_features is None else text_features
        return self.logits(self.encode_image(image), text_features)


class LoRATrainer(ClipPromptTrainer):
    """Base trainer: CLIP + LoRA, trained on cross-entropy; subclasses set ``CFG_NODE`` and their recipe."""

    LEARNABLE = ("lora",)

    _eval_text: Optional[Tensor] = None
    _frozen_text: Optional[Tensor] = None

    # ------------------------------------------------------------------ config
    def check_cfg(self, cfg) -> None:
        node, name = self.method_cfg(cfg), f"TRAINER.{self.cfg_node_name()}"
        if node.PREC not in LORA_PRECISIONS:
            raise ValueError(f"{name}.PREC={node.PREC!r}; choose one of {', '.join(LORA_PRECISIONS)} "
                             "(LoRA tensors train in fp32; amp runs CLIP in fp16 autocast)")
        if node.ENCODER not in ENCODERS:
            raise ValueError(f"{name}.ENCODER={node.ENCODER!r}; choose one of {', '.join(ENCODERS)}")
        if not node.PARAMS or set(node.PARAMS) - set(PROJECTIONS):
            raise ValueError(f"{name}.PARAMS={list(node.PARAMS)}; choose a non-empty subset of {list(PROJECTIONS)}")
        if node.POSITION not in POSITIONS:
            raise ValueError(f"{name}.POSITION={node.POSITION!r}; choose one of {', '.join(POSITIONS)}")
        if node.SCALING not in SCALINGS:
            raise ValueError(f"{name}.SCALING={node.SCALING!r}; choose one of {', '.join(SCALINGS)}")
        for key in ("R", "TEXT_R", "VISION_R"):
            if node[key] < (1 if key == "R" else 0):
                raise ValueError(f"{name}.{key}={node[key]}; ranks must be >= 1 (0 = use R for TEXT_R/VISION_R)")
        if not 0 <= node.DROPOUT < 1:
            raise ValueError(f"{name}.DROPOUT={node.DROPOUT}; it must be in [0, 1)")
        if node.LR_STEP not in LR_STEPS:
            raise ValueError(f"{name}.LR_STEP={node.LR_STEP!r}; choose one of {', '.join(LR_STEPS)}")
        if node.ITERS_PER_SHOT > 0 and cfg.DATASET.NUM_SHOTS < 1:
            raise ValueError(f"{name}.ITERS_PER_SHOT={node.ITERS_PER_SHOT} needs DATASET.NUM_SHOTS >= 1 (got "
                             f"{cfg.DATASET.NUM_SHOTS}); set {name}.ITERS_PER_SHOT 0 to train OPTIM.MAX_EPOCH epochs")
        if node.LR_STEP == "epoch" and node.ITERS_PER_SHOT > 0:
            raise ValueError(f"{name}.LR_STEP epoch steps OPTIM.LR_SCHEDULER over OPTIM.MAX_EPOCH epochs; set "
                             f"{name}.ITERS_PER_SHOT 0 with it (or LR_STEP iter for an iteration budget)")
        if node.LR_STEP == "iter" and cfg.OPTIM.WARMUP_EPOCH > 0:
            raise ValueError(f"{name}.LR_STEP iter has no warmup; set OPTIM.WARMUP_EPOCH -1 or LR_STEP epoch")
        if node.TEMPLATE and node.TEMPLATE.count("{}") != 1:
            raise ValueError(f"{name}.TEMPLATE={node.TEMPLATE!r} must contain one '{{}}' for the class name")
        if not 0 <= node.LABEL_SMOOTHING < 1:
            raise ValueError(f"{name}.LABEL_SMOOTHING={node.LABEL_SMOOTHING}; it must be in [0, 1)")
        self.check_transform_cfg(cfg, node, name)
        if node.PATIENCE < 0 or (node.PATIENCE > 0 and cfg.TEST.FINAL_MODEL != "best_val"):
            raise ValueError(f"{name}.PATIENCE={node.PATIENCE} needs TEST.FINAL_MODEL best_val (validation after "
                             "every epoch) and must be >= 0; set PATIENCE 0 to train without early stopping")
        super().check_cfg(cfg)

    @staticmethod
    def check_transform_cfg(cfg, node, name: str) -> None:
        if node.TEST_RESIZE < 0 or node.RANDAUGMENT_OPS < 0:
            raise ValueError(f"{name}.TEST_RESIZE={node.TEST_RESIZE} / RANDAUGMENT_OPS={node.RANDAUGMENT_OPS}; "
                             "use 0 (off) or a positive value")
        if node.TEST_RESIZE and node.TEST_RESIZE < max(cfg.INPUT.SIZE):
            raise ValueError(f"{name}.TEST_RESIZE={node.TEST_RESIZE} is smaller than INPUT.SIZE {cfg.INPUT.SIZE}; "
                             "the centre crop needs TEST_RESIZE >= INPUT.SIZE (DISEF: 256 for 224)")
        if node.CLIP_PREPROCESS and (node.TEST_RESIZE or node.RANDAUGMENT_OPS):
            raise ValueError(f"{name}.CLIP_PREPROCESS True replaces both transforms; set {name}.TEST_RESIZE 0 and "
                             f"{name}.RANDAUGMENT_OPS 0 with it")
        if node.CLIP_PREPROCESS and cfg.INPUT.SIZE[0] != cfg.INPUT.SIZE[1]:
            raise ValueError(f"{name}.CLIP_PREPROCESS needs a square INPUT.SIZE (got {cfg.INPUT.SIZE})")
        if node.RANDAUGMENT_OPS and cfg.INPUT.NO_TRANSFORM:
            raise ValueError(f"{name}.RANDAUGMENT_OPS needs Dassl's training transform; unset INPUT.NO_TRANSFORM")

    def templates(self) -> list[str]:
        """The class prompts' templates: ``TEMPLATE``, or the dataset's (its list with ``AVERAGE_TEMPLATES``)."""
        node = self.method_cfg()
        if node.TEMPLATE:
            return [node.TEMPLATE]
        if node.AVERAGE_TEMPLATES:
            return list(dataset_templates(self.cfg.DATASET.NAME))
        return [dataset_template(self.cfg.DATASET.NAME)]

    # ------------------------------------------------------------------ data and training length
    def build_train_transform(self):
        """CLIP's preprocessing (``CLIP_PREPROCESS``), or RandAugment before Dassl's (``RANDAUGMENT_OPS``)."""
        node = self.method_cfg()
        if node.CLIP_PREPROCESS:
            logger.info(f"Training transform: CLIP's preprocessing at {self.cfg.INPUT.SIZE[0]} px (no augmentation)")
            return clip_preprocess(self.cfg.INPUT.SIZE[0])
        if node.RANDAUGMENT_OPS > 0:
            logger.info(f"Training transform: RandAugment({node.RANDAUGMENT_OPS}, {node.RANDAUGMENT_MAGNITUDE}), then "
                        f"INPUT.TRANSFORMS")
            dassl = build_transform(self.cfg, is_train=True)
            return Compose([RandAugment(node.RANDAUGMENT_OPS, node.RANDAUGMENT_MAGNITUDE), *dassl.transforms])
        return None

    def build_test_transform(self):
        """CLIP's preprocessing (``CLIP_PREPROCESS``), or resize to ``TEST_RESIZE`` + centre crop; None = Dassl's."""
        node, cfg = self.method_cfg(), self.cfg
        if node.CLIP_PREPROCESS:
            logger.info(f"Test transform: CLIP's preprocessing at {cfg.INPUT.SIZE[0]} px")
            return clip_preprocess(cfg.INPUT.SIZE[0])
        if node.TEST_RESIZE > 0:
            logger.info(f"Test transform: resize to {node.TEST_RESIZE}, centre crop {tuple(cfg.INPUT.SIZE)}")
            return resize_crop_transform(node.TEST_RESIZE, cfg.INPUT.SIZE, cfg.INPUT.INTERPOLATION,
                                         cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        return None

    def build_data_manager(self):
        """Dassl's data, with the training batches cut to the iteration budget (``IterationBudgetLoader``)."""
        dm = super().build_data_manager()
        loader = self.build_train_loader(dm)
        node = self.method_cfg()
        per_epoch = len(loader)  # global batches: the same on every rank under torchrun
        if node.ITERS_PER_SHOT > 0:
            self.total_iters = node.ITERS_PER_SHOT * self.cfg.DATASET.NUM_SHOTS
            self.max_epoch = math.ceil(self.total_iters / per_epoch)
        else:
            self.total_iters = self.max_epoch * per_epoch
        dm.train_loader_x = IterationBudgetLoader(loader, self.total_iters, lambda: self.epoch)
        logger.info(f"Training for {self.total_iters} iterations ({self.max_epoch} epochs of up to {per_epoch} "
                    f"batches)")
        return dm

    def build_train_loader(self, dm):
        """Hook: the loader of training batches (DISEF pairs real with synthetic images); default Dassl's."""
        return dm.train_loader_x

    def lora_specs(self):
        node = self.method_cfg()
        return lora_specs(node.ENCODER, node.R, node.ALPHA, node.DROPOUT, node.PARAMS, node.POSITION, node.SCALING,
                          text_r=node.TEXT_R, vision_r=node.VISION_R, shared_dropout=node.SHARED_DROPOUT)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.method_cfg()
        templates = self.templates()
        prompts = [template.format(name.replace("_", " ")) for name in classnames for template in templates]
        logger.info(f"Prompts ({len(classnames)} classes x {len(templates)} templates): "
                    f"{prompts[:5]}{' ...' if len(prompts) > 5 else ''}")
        self.adapt_text = node.ENCODER in ("text", "both")
        self.adapt_vision = node.ENCODER in ("vision", "both")
        lora = apply_lora(clip_model, self.lora_specs())
        return LoRACLIP(lora, clip_model, clip.tokenize(prompts).long(), n_templates=len(templates),
                        truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE, logit_scale=node.LOGIT_SCALE)

    def freeze_all_but_learnable(self, model: nn.Module) -> dict[str, nn.Module]:
        """Freeze everything, then unfreeze the A/B tensors (by identity: they are registered twice)."""
        model.requires_grad_(False)
        model.lora.requires_grad_(True)
        n_params = sum(p.numel() for p in model.lora.parameters())
        logger.info(f"Turning off gradients outside the LoRA tensors: {n_params:,} learnable parameters")
        logger.debug(f"Parameters to be updated: {[name for name, _ in model.lora.named_parameters()]}")
        return {"lora": model.lora}

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module) -> tuple[Any, Any]:
        optim = build_optimizer(module, self.cfg.OPTIM)
        node = self.method_cfg()
        if node.LR_STEP == "epoch":
            return optim, build_lr_scheduler(optim, self.cfg.OPTIM)
        if self.cfg.OPTIM.LR_SCHEDULER != "cosine":
            logger.warning(f"LR_STEP iter always runs a cosine schedule; OPTIM.LR_SCHEDULER="
                           f"{self.cfg.OPTIM.LR_SCHEDULER} is ignored")
        return optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=self.total_iters, eta_min=node.ETA_MIN)

    # ------------------------------------------------------------------ training step
    def frozen_text_features(self) -> Tensor:
        """Text features of the un-adapted text tower, computed once (ENCODER vision)."""
        if self._frozen_text is None:
            with torch.no_grad():
                self._frozen_text = self.model.encode_text()
        return self._frozen_text

    def forward_train(self, image: Tensor, label: Tensor) -> Tensor:
        """Logits with text features re-encoded at every step (when the text tower is adapted)."""
        text_features = self.model.encode_text() if self.adapt_text else self.frozen_text_features()
        with torch.set_grad_enabled(self.adapt_vision):
            image_features = self.model.encode_image(image)
        return self.model.logits(image_features, text_features)

    def compute_loss(self, output: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(output, label, label_smoothing=self.method_cfg().LABEL_SMOOTHING)

    def lr_step_policy(self) -> str:
        """CLIP-LoRA steps its cosine schedule every iteration (``LR_STEP iter``); Dassl's schedules per epoch."""
        return "iter" if self.method_cfg().LR_STEP == "iter" else "epoch"

    def test(self, split: Optional[str] = None) -> float:
        self._eval_text = None  # re-encode the class prompts once per evaluation
        return super().test(split)

    def model_inference(self, image: Tensor) -> Tensor:
        with self.autocast():
            if self._eval_text is None:
                self._eval_text = self.model.encode_text() if self.adapt_text else self.frozen_text_features()
            return self.model.logits(self.model.encode_image(image), self._eval_text).float()

    # ------------------------------------------------------------------ early stopping
    def early_stop_path(self, directory: Optional[str] = None) -> str:
        return osp.join(directory or self.output_dir, EARLY_STOP_FILE)

    def read_early_stop_state(self) -> Optional[dict]:
        """The patience state saved by the epoch before ``start_epoch`` (rank 0 reads, every rank gets it)."""
        state = None
        path = self.early_stop_path(self.cfg.RESUME or self.output_dir)
        if is_main_process() and self.method_cfg().PATIENCE > 0 and self.start_epoch > 0 and osp.isfile(path):
            with open(path) as f:
                state = json.load(f)
        return broadcast_object(state)

    def before_train(self) -> None:
        super().before_train()  # resumes from the last checkpoint, if any
        self._bad_epochs = 0
        state = self.read_early_stop_state()
        if state is not None and state["epoch"] + 1 == self.start_epoch:
            self.best_result, self._bad_epochs = state["best_result"], state["bad_epochs"]
            if state["stopped"]:
                self.request_stop(f"early stopping already happened at epoch {state['epoch'] + 1}; not training")

    def after_validation(self, result: float) -> None:
        """Keep the best model, then count epochs without improvement (early stopping, ``PATIENCE``).

        ``result`` is gathered over all ranks under torchrun, so every rank takes the same decision.
        """
        best_before = self.best_result
        super().after_validation(result)
        node = self.method_cfg()
        if node.PATIENCE <= 0:
            return
        self._bad_epochs = 0 if self.best_result > best_before else self._bad_epochs + 1
        limit = node.PATIENCE + 1 if node.PATIENCE_LITERAL else node.PATIENCE
        last_epoch = self.epoch + 1 == self.max_epoch
        stop = self._bad_epochs >= limit and not last_epoch
        if is_main_process():
            state = {"epoch": self.epoch, "best_result": float(self.best_result), "bad_epochs": self._bad_epochs,
                     "stopped": stop}
            tmp = self.early_stop_path() + f".tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.early_stop_path())
        if stop:  # the engine still writes this epoch's checkpoint, so a re-run resumes here and finds "stopped"
            self.request_stop(f"no better val accuracy for {self._bad_epochs} epochs after epoch {self.epoch + 1} "
                              f"(best {self.best_result:.2f})")

    def after_train(self) -> None:
        super().after_train()  # deploys model-best (TEST.FINAL_MODEL best_val) and tests
        if not is_main_process():
            return
        path = osp.join(self.output_dir, LORA_FILE)
        save_lora(path, self.model.lora, {"backbone": self.cfg.MODEL.BACKBONE.NAME, "trainer": type(self).__name__})
        logger.info(f"LoRA weights saved to {path}")
