"""LangevinCoOp: Langevin-dynamics sampling of CoOp prompts and a hard-vote ensemble, for long-tailed CIFAR.

"Langevin Dynamics Sampling of Prompt Distribution for Vision-Language Model", reference implementation
Walter-pixel/COOP_Langevin_Public@7fe769c; builds on CoOp (Zhou et al., "Learning to Prompt for Vision-Language
Models", arXiv:2109.01134) and SGLD (Welling & Teh, ICML 2011).

Class-specific CoOp prompts on a frozen CLIP are trained with a logit-adjusted cross-entropy,
``CE(100 * cos(img, txt_c) + log(pi_c^tau + 1e-12))``.  Phase 1 trains without noise and saves the prompt every
few epochs; phase 2 starts from one of those prompts (``--init-from``) and runs stochastic-gradient Langevin
dynamics: noise from a chosen epoch on, and every end-of-epoch prompt after burn-in enters a FIFO bank of K
samples.  At test time the current prompt ("one model") and the majority vote of the K samples ("K models")
predict by the argmax of cosine similarity; overall and many/medium/few accuracies are reported.  Formulas,
defaults, the differences from the reference and their literal switches: docs/methods/langevin_coop.md.
"""
from __future__ import annotations

import logging
import math
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import all_gather_object, broadcast_object, is_distributed, is_main_process, progress
from dassl.utils.safe_pickle import torch_load_weights

from ..common.prompt_clip import PromptCLIP
from ..common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase
from ..common.prompt_trainer import ClipPromptTrainer
from .metrics import OUR_TAGS, REFERENCE_TAGS, TagStyle, group_accuracies, last_batch_size
from .recipe import log_prior, lr_at_epoch, reference_transforms, round_text_tower_to_fp16
from .sample_bank import SampleBank, atomic_save
from .sgld import NOISE_MODES, SGLD, draw_noise_seed
from .votes import VoteAccumulator

logger = logging.getLogger(__name__)

AUGMENTS = ("reference", "dassl")
LR_SCHEDULERS = ("single_step", "multi_step")
BANK_DIR = "sample_bank"  # under OUTPUT_DIR
PROMPT_DIR = "saved_prompts"  # the reference's saved_prompts_at_training


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.LANGEVINCOOP = CN()
    node = cfg.TRAINER.LANGEVINCOOP
    node.N_CTX = 15  # context vectors per prompt (the reference's config/spec_nctx15.yaml)
    node.CSC = True  # class-specific contexts (n_cls, N_CTX, D); False = one generic context
    node.CLASS_TOKEN_POSITION = "end"  # end, middle or front
    node.INIT_STD = 0.02  # std of the random context init (the reference ignores CTX_INIT)
    node.PREC = "fp32"  # fp32 (reference), fp16 or amp (CUDA only)
    node.LA_TAU = 1.0  # logit adjustment: training logits + log(pi_c^LA_TAU + 1e-12); 0 = plain cross-entropy
    node.BURN_IN = 200  # first epoch index whose end-of-epoch prompt enters the bank; >= MAX_EPOCH = none (phase 1)
    node.MAX_SAMPLES = 80  # bank size K (FIFO); the ensemble is evaluated once the bank is full
    # Noise after NOISE_START: sgld_temp (Langevin, sqrt(2 * lr * TEMP)), sgld (the reference's "var" mode),
    # none, or ref_small (literal: the reference's "var_my_noise" rule, std NOISE_SCALE * lr, far too small
    # to be Langevin dynamics)
    node.NOISE_MODE = "sgld_temp"
    node.NOISE_SCALE = 1e-5  # ref_small: noise std = NOISE_SCALE * lr
    node.TEMP = -1.0  # sgld_temp: temperature T on the mean loss; -1 = 1 / (number of training images)
    node.NOISE_START = -1  # first epoch index with noise; -1 = BURN_IN + 1 (as the reference)
    node.INIT_FROM = ""  # phase 2: prompt file to start from (saved_prompts/*.pth, a Dassl or a reference checkpoint)
    node.START_EPOCH = -1  # phase 2: first epoch index; -1 = the checkpoint's epoch, trained again (as the reference)
    # Literal: the reference silently takes lr and weight decay of phase 2 from the phase-1 optimizer state
    # stored in INIT_FROM (its --lr_prompt / --wd flags are overwritten); False = OPTIM.LR / OPTIM.WEIGHT_DECAY
    node.INIT_LOAD_OPTIM = False
    node.PROMPT_SAVE_FREQ = 40  # save saved_prompts/prompt_epoch_<e>.pth when e % FREQ == 0 and at the end; 0 = off
    node.EVAL_FREQ = 20  # also test after epoch e when e > 0 and e % FREQ == 0; 0 = only at the end
    node.SOFT_VOTE = True  # also report the mean-probability vote
    # Literal metrics: the reference's one-model accuracy and many/medium/few cover only the last test batch
    # (its accumulators are reset inside the batch loop) and its TensorBoard tags are OneModel/test_Acc@1,
    # OneModel/test_acc_median, "All Model/test_acc_*", ... with fractions.  True logs the last-batch figures
    # next to the full-set ones and writes the reference's tags and values; False = full set only, our tags
    # (OneModel/test_acc, OneModel/test_acc_medium, AllModel/...) in percent
    node.ONE_MODEL_LAST_BATCH = False
    # Literal numerics: the reference's text tower rounds its positional embedding and final LayerNorm output
    # to fp16 (it records CLIP's dtype before casting the model to fp32) and adds the logit adjustment in
    # float64; False = fp32 throughout
    node.REFERENCE_NUMERICS = False
    # reference: random crop + flip + RandAugment at NATIVE_SIZE, then resize to INPUT.SIZE; dassl: INPUT.TRANSFORMS
    node.AUGMENT = "reference"
    node.NATIVE_SIZE = 32  # AUGMENT reference: side (px) of the stored images, where the crop runs (CIFAR: 32)
    node.TRAIN_DROP_LAST = False  # False keeps the last partial training batch (reference); True = Dassl's rule


@TRAINER_REGISTRY.register()
class LangevinCoOp(ClipPromptTrainer):
    """Langevin-dynamics sampling of CoOp prompts with a hard-vote ensemble.

    "Langevin Dynamics Sampling of Prompt Distribution for Vision-Language Model",
    https://github.com/Walter-pixel/COOP_Langevin_Public (CoOp: https://arxiv.org/abs/2109.01134)
    """

    LEARNABLE = ("prompt_learner",)
    CLI_FLAGS = {"--init-from": ("TRAINER.LANGEVINCOOP.INIT_FROM", "phase 2: the phase-1 prompt file to start from")}

    # ------------------------------------------------------------------ config and data
    def check_cfg(self, cfg) -> None:
        node, name = cfg.TRAINER.LANGEVINCOOP, "TRAINER.LANGEVINCOOP"
        if node.N_CTX < 1:
            raise ValueError(f"{name}.N_CTX={node.N_CTX}; use at least 1 context vector")
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"{name}.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}; choose one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        if node.NOISE_MODE not in NOISE_MODES:
            raise ValueError(f"{name}.NOISE_MODE={node.NOISE_MODE!r}; choose one of {', '.join(NOISE_MODES)}")
        if node.TEMP < 0 and node.TEMP != -1:
            raise ValueError(f"{name}.TEMP={node.TEMP}; use a temperature >= 0, or -1 for 1/N")
        if node.MAX_SAMPLES < 1 or node.BURN_IN < 0 or node.INIT_STD <= 0:
            raise ValueError(f"{name}: MAX_SAMPLES={node.MAX_SAMPLES} must be >= 1, BURN_IN={node.BURN_IN} >= 0, "
                             f"INIT_STD={node.INIT_STD} > 0")
        n_samples = cfg.OPTIM.MAX_EPOCH - node.BURN_IN
        if 0 < n_samples < node.MAX_SAMPLES:
            raise ValueError(f"{name}: epochs BURN_IN={node.BURN_IN}..MAX_EPOCH-1={cfg.OPTIM.MAX_EPOCH - 1} give "
                             f"{n_samples} < MAX_SAMPLES={node.MAX_SAMPLES} samples, so the ensemble would never run; "
                             "lower BURN_IN or MAX_SAMPLES, or set BURN_IN >= MAX_EPOCH for a noise-free phase 1")
        if cfg.OPTIM.NAME != "sgld":
            raise ValueError(f"OPTIM.NAME={cfg.OPTIM.NAME!r}; LangevinCoOp trains with its SGLD optimizer: "
                             "set OPTIM.NAME sgld")
        if cfg.OPTIM.LR_SCHEDULER not in LR_SCHEDULERS or cfg.OPTIM.WARMUP_EPOCH > 0:
            raise ValueError(f"OPTIM.LR_SCHEDULER={cfg.OPTIM.LR_SCHEDULER!r}, WARMUP_EPOCH={cfg.OPTIM.WARMUP_EPOCH}; "
                             f"LangevinCoOp supports {', '.join(LR_SCHEDULERS)} without warmup")
        if node.INIT_FROM and not osp.isfile(node.INIT_FROM):
            raise FileNotFoundError(f"{name}.INIT_FROM={node.INIT_FROM} is not a file; pass a phase-1 "
                                    f"{PROMPT_DIR}/prompt_epoch_<e>.pth")
        if node.AUGMENT not in AUGMENTS:
            raise ValueError(f"{name}.AUGMENT={node.AUGMENT!r}; choose one of {', '.join(AUGMENTS)}")
        if node.NATIVE_SIZE < 1:
            raise ValueError(f"{name}.NATIVE_SIZE={node.NATIVE_SIZE}; give the stored image side in pixels (CIFAR: 32)")
        super().check_cfg(cfg)

    def build_train_transform(self):
        return reference_transforms(self.cfg)[0] if self.cfg.TRAINER.LANGEVINCOOP.AUGMENT == "reference" else None

    def build_test_transform(self):
        return reference_transforms(self.cfg)[1] if self.cfg.TRAINER.LANGEVINCOOP.AUGMENT == "reference" else None

    def build_data_manager(self):
        dm = super().build_data_manager()
        if not self.cfg.TRAINER.LANGEVINCOOP.TRAIN_DROP_LAST and dm.train_loader_x.batch_sampler.drop_last:
            dm.set_split("train_x", dm.split_items["train_x"], drop_last=False)  # the reference keeps it
        return dm

    # ------------------------------------------------------------------ model
    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.LANGEVINCOOP
        prompt_learner = PromptLearnerBase(classnames, clip_model, n_ctx=node.N_CTX, ctx_init="", csc=node.CSC,
                                           class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD)
        text_encoder = self.make_text_encoder(clip_model)
        if node.REFERENCE_NUMERICS:
            round_text_tower_to_fp16(text_encoder)
        return PromptCLIP(prompt_learner, text_encoder, clip_model)

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module) -> tuple:
        """SGLD over the prompt only (noise-free until ``before_epoch`` says otherwise); lr set per epoch.

        Under torchrun every rank uses rank 0's noise seed, so all ranks draw the same noise.
        """
        node = self.cfg.TRAINER.LANGEVINCOOP
        temperature = node.TEMP if node.TEMP >= 0 else 1.0 / len(self.dm.dataset.train_x)
        seed = broadcast_object(draw_noise_seed())
        self.optim = SGLD(module.parameters(), lr=self.cfg.OPTIM.LR, weight_decay=self.cfg.OPTIM.WEIGHT_DECAY,
                          noise_mode="none", temperature=temperature, noise_scale=node.NOISE_SCALE, seed=seed)
        return self.optim, None

    def build_model(self) -> None:
        super().build_model()
        cfg, node = self.cfg, self.cfg.TRAINER.LANGEVINCOOP
        self.prompt_learner = self.model.prompt_learner
        counts = getattr(self.dm.dataset, "cls_num_list", None)
        if counts is None:
            counts = np.bincount([d.label for d in self.dm.dataset.train_x], minlength=self.num_classes).tolist()
        prior_dtype = torch.float64 if node.REFERENCE_NUMERICS else torch.float32
        self.class_log_prior = log_prior(counts, node.LA_TAU, prior_dtype).to(self.device)  # (C,)
        self.base_lr, self.weight_decay = cfg.OPTIM.LR, cfg.OPTIM.WEIGHT_DECAY
        self.noise_start = node.NOISE_START if node.NOISE_START >= 0 else node.BURN_IN + 1
        self.bank = self.make_bank(cfg.OUTPUT_DIR)
        self.tags: TagStyle = REFERENCE_TAGS if node.ONE_MODEL_LAST_BATCH else OUR_TAGS
        self.eval_features: Dict[str, Tuple[Tensor, Tensor]] = {}  # split -> (features, labels), frozen encoder
        self.epoch_stats = {"loss": 0.0, "correct": 0.0, "n": 0}
        self.last_results: Dict[str, Dict] = {}  # the latest test(): one_model / ensemble totals and accuracies

    def make_bank(self, directory: str) -> SampleBank:
        """The bank of ``<directory>/sample_bank``; only rank 0 writes its files, every rank holds the samples."""
        return SampleBank(osp.join(directory, BANK_DIR), self.cfg.TRAINER.LANGEVINCOOP.MAX_SAMPLES,
                          persist=is_main_process())

    # ------------------------------------------------------------------ training
    def compute_loss(self, output: Tensor, label: Tensor) -> Tensor:
        """Logit-adjusted cross-entropy ``CE(logits + log(pi^tau + 1e-12), y)`` over this process's images."""
        logits = output.double() if self.class_log_prior.dtype == torch.float64 else output.float()
        return F.cross_entropy(logits + self.class_log_prior, label)  # the engine weights ranks' uneven shares

    def loss_summary(self, output, label: Tensor, loss: Tensor) -> Dict[str, float]:
        summary = super().loss_summary(output, label, loss)
        n = label.shape[0]
        self.epoch_stats["loss"] += summary["loss"] * n
        self.epoch_stats["correct"] += summary["acc"] * n / 100.0
        self.epoch_stats["n"] += n
        return summary

    def before_train(self) -> None:
        super().before_train()  # resumes from OUTPUT_DIR: prompt, SGLD state (noise stream), RNG states
        node = self.cfg.TRAINER.LANGEVINCOOP
        if self.start_epoch == 0 and node.INIT_FROM:
            self.start_epoch = self.init_from_checkpoint(node.INIT_FROM)
        self.bank.restore(before_epoch=self.start_epoch)

    def init_from_checkpoint(self, path: str) -> int:
        """Load a phase-1 prompt strictly; return the epoch index phase 2 starts at."""
        node = self.cfg.TRAINER.LANGEVINCOOP
        ckpt = torch_load_weights(path, map_location="cpu")
        state = ckpt.get("state_dict", ckpt.get("prompt_learner_state")) if isinstance(ckpt, dict) else None
        if state is None or not ("at_epoch" in ckpt or "epoch" in ckpt):
            raise KeyError(f"{path}: expected a prompt file with state_dict (or prompt_learner_state) and at_epoch "
                           "(or Dassl's epoch); pass a phase-1 saved_prompts/prompt_epoch_<e>.pth")
        self.prompt_learner.load_state_dict(self.drop_frozen_buffers(state), strict=True)
        at_epoch = int(ckpt["at_epoch"]) if "at_epoch" in ckpt else int(ckpt["epoch"]) - 1
        if node.INIT_LOAD_OPTIM:  # literal: the file's optimizer hyper-parameters win over OPTIM.LR / WEIGHT_DECAY
            group = ckpt.get("optim_hparams") or next(ckpt[k] for k in ("optimizer", "optim_prompt_state_dict")
                                                      if k in ckpt)["param_groups"][0]
            self.base_lr, self.weight_decay = group.get("initial_lr", group["lr"]), group["weight_decay"]
        start = at_epoch if node.START_EPOCH < 0 else node.START_EPOCH
        logger.info(f'Initialised the prompt from "{path}" (saved after epoch index {at_epoch}); training starts at '
                    f"epoch index {start} with lr {self.base_lr:g}, weight decay {self.weight_decay:g}")
        return start

    def before_epoch(self) -> None:
        optim = self.cfg.OPTIM
        lr = lr_at_epoch(self.epoch, self.base_lr, optim.LR_SCHEDULER, optim.STEPSIZE, optim.GAMMA)
        for group in self.optim.param_groups:
            group["lr"], group["weight_decay"] = lr, self.weight_decay
        noise_mode = self.cfg.TRAINER.LANGEVINCOOP.NOISE_MODE if self.epoch >= self.noise_start else "none"
        self.optim.set_noise_mode(noise_mode)
        self.epoch_stats = {"loss": 0.0, "correct": 0.0, "n": 0}

    def end_of_epoch(self) -> None:
        """Epoch scalars, the sample bank, the saved prompt and the periodic test (before Dassl's checkpoint)."""
        node, e = self.cfg.TRAINER.LANGEVINCOOP, self.epoch
        last = e + 1 == self.max_epoch
        stats = self.epoch_stats
        if is_distributed():  # every process saw its share of each batch
            shares = all_gather_object(stats)
            stats = {k: sum(s[k] for s in shares) for k in stats}
        if stats["n"]:
            self.write_scalar("OneModel/train_loss_main", stats["loss"] / stats["n"], e)
            if self.tags.extras:
                self.write_scalar("OneModel/train_acc", 100.0 * stats["correct"] / stats["n"], e)
        self.write_scalar("lr/lr_prompt", self.get_current_lr(), e)
        if e >= node.BURN_IN:
            self.bank.add(e, self.prompt_learner.state_dict())
        if node.PROMPT_SAVE_FREQ > 0 and (e % node.PROMPT_SAVE_FREQ == 0 or last):
            self.save_prompt(e)
        if node.EVAL_FREQ > 0 and e > 0 and e % node.EVAL_FREQ == 0 and not last and not self.cfg.TEST.NO_TEST:
            self.test()

    def save_prompt(self, epoch: int) -> None:
        """``saved_prompts/prompt_epoch_<epoch>.pth``: the prompt after epoch index ``epoch`` (a phase-2 start)."""
        if not is_main_process():
            return
        path = osp.join(self.output_dir, PROMPT_DIR, f"prompt_epoch_{epoch}.pth")
        hparams = {"initial_lr": self.base_lr, "lr": self.get_current_lr(), "weight_decay": self.weight_decay}
        state = {k: v.detach().cpu() for k, v in self.prompt_learner.state_dict().items()}
        atomic_save({"state_dict": state, "at_epoch": epoch, "optim_hparams": hparams}, path)
        logger.info(f"Prompt saved to {path}")

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="") -> None:
        super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)
        if not model_name and osp.abspath(osp.join(directory, BANK_DIR)) == osp.abspath(self.bank.directory):
            self.bank.prune()  # a resume from this checkpoint needs only the current window (rank 0 only)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load the prompt, and the bank as it was at that checkpoint (``<directory>/sample_bank``)."""
        super().load_model(directory, epoch)
        if directory:
            self.bank = self.make_bank(directory)
            self.bank.restore(before_epoch=epoch)  # Dassl's epoch N = after N epochs: sample indices < N

    # ------------------------------------------------------------------ evaluation
    def image_features(self, split: str, loader) -> Tuple[Tensor, Tensor]:
        """L2-normalised image features ``(N, E)`` and labels ``(N,)`` of the whole ``split``, encoded once per run
        (under torchrun each process encodes its block and every process gets all of them)."""
        if split not in self.eval_features:
            features, labels = self.encode_split(split, loader)
            self.eval_features[split] = (features.to(self.device).float(), labels.to(self.device))
        return self.eval_features[split]

    def logits(self, image_features: Tensor) -> Tensor:
        """CLIP logits ``(N, C)`` of the current prompt; the argmax equals the reference's argmax of cosine."""
        return self.model.logit_scale.exp().float() * image_features @ self.model.encode_text().float().t()

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """One-model and K-model accuracy (overall and many/medium/few) over every image of ``split``."""
        self.set_model_mode("eval")
        split, loader, _ = self.eval_split(split)
        logger.info(f"Evaluate on the *{split}* set")
        features, labels = self.image_features(split, loader)
        logits = self.logits(features)  # (N, C)
        self.evaluator.reset()
        self.evaluator.process(logits, labels)
        results = self.evaluator.evaluate()  # Dassl's "=> result" block over all N images
        self.write_results(split, results)
        pred = logits.argmax(dim=1)
        groups = self.report_groups("", pred, labels)
        self.last_results = {"one_model": {"total": len(labels), "accuracy": results["accuracy"],
                                           **{f"{g}_accuracy": acc for g, acc in groups.items()}}}
        if self.cfg.TRAINER.LANGEVINCOOP.ONE_MODEL_LAST_BATCH:
            accuracy, groups = self.report_last_batch(pred, labels)
            self.last_results["one_model"]["last_batch"] = {"accuracy": accuracy, **groups}
        else:
            accuracy = results["accuracy"]
        self.write_accuracies(self.tags.one_model, self.tags.one_model_group, split, accuracy, groups)
        if self.bank.is_full:
            self.last_results["ensemble"] = self.test_ensemble(features, labels, split)
        elif len(self.bank):
            logger.warning(f"Sample bank holds {len(self.bank)} of {self.bank.capacity} samples; ensemble skipped")
        return results["accuracy"]

    def report_last_batch(self, pred: Tensor, labels: Tensor) -> Tuple[float, Dict[str, float]]:
        """Log the reference's one-model figures: accuracy and groups (%) of the last test batch only."""
        n_last = last_batch_size(len(labels), self.cfg.DATALOADER.TEST.BATCH_SIZE)
        pred, labels = pred[-n_last:], labels[-n_last:]
        accuracy = 100.0 * (pred == labels).double().mean().item()
        logger.info(f"* last_batch_accuracy: {accuracy:.1f}% ({n_last} images, the reference's one-model figure)")
        return accuracy, self.report_groups("last_batch_", pred, labels)

    def report_groups(self, name: str, pred: Tensor, labels: Tensor) -> Dict[str, float]:
        """Log many/medium/few accuracies (%) when the dataset defines ``groups``; return them by group."""
        groups = getattr(self.dm.dataset, "groups", None)
        if not groups:
            return {}
        accs = group_accuracies(pred, labels, groups, self.num_classes)
        lines = []
        for group, acc in accs.items():
            if math.isnan(acc):
                lines.append(f"* {name}{group}_accuracy: n/a (no class)")
            else:
                lines.append(f"* {name}{group}_accuracy: {acc:.1f}% ({len(groups[group])} classes)")
        logger.info("\n".join(lines))
        return accs

    def write_accuracies(self, tag: str, group_tag: str, split: str, accuracy: float, groups: Dict[str, float]
                         ) -> None:
        """TensorBoard scalars of one figure (percentages in, scaled and named by ``self.tags``)."""
        style = self.tags
        self.write_scalar(tag.format(split=split), accuracy * style.scale, self.epoch)
        for group, acc in groups.items():
            if not math.isnan(acc) or style.empty_group_nan:
                self.write_scalar(style.group_tag(group_tag, split, group), acc * style.scale, self.epoch)

    def test_ensemble(self, features: Tensor, labels: Tensor, split: str) -> Dict[str, float]:
        """Hard (and soft) vote of the bank's samples on cached image features: one text pass per sample."""
        votes = VoteAccumulator(len(labels), self.num_classes, features.device)
        current = {k: v.clone() for k, v in self.prompt_learner.state_dict().items()}
        curve = []
        try:
            for _, state in progress(list(reversed(self.bank.items())), "ensemble", enabled=is_main_process()):
                self.prompt_learner.load_state_dict(state)  # newest first
                votes.add_logits(self.logits(features))
                curve.append(100.0 * (votes.hard() == labels).double().mean().item())
        finally:
            self.prompt_learner.load_state_dict(current)
        epochs = self.bank.epochs
        result = {"total": len(labels), "num_samples": len(epochs), "hard_vote_accuracy": curve[-1]}
        lines = [f"=> ensemble result ({len(epochs)} samples, epoch indices {epochs[0]}-{epochs[-1]})",
                 f"* total: {len(labels):,}", f"* hard_vote_accuracy: {curve[-1]:.1f}%"]
        if self.cfg.TRAINER.LANGEVINCOOP.SOFT_VOTE:
            result["soft_vote_accuracy"] = 100.0 * (votes.soft() == labels).double().mean().item()
            lines.append(f"* soft_vote_accuracy: {result['soft_vote_accuracy']:.1f}%")
        logger.info("\n".join(lines))
        groups = self.report_groups("hard_vote_", votes.hard(), labels)
        result.update({f"hard_vote_{g}_accuracy": acc for g, acc in groups.items()})
        self.write_accuracies(self.tags.ensemble, self.tags.ensemble_group, split, curve[-1], groups)
        if self.tags.extras:
            if "soft_vote_accuracy" in result:
                self.write_scalar(f"AllModel/{split}_acc_soft", result["soft_vote_accuracy"], self.epoch)
            for k, acc in enumerate(curve, start=1):  # k newest samples; k = 1 is the one-model prediction
                self.write_scalar(f"AllModel/{split}_acc_vs_num_samples/epoch_{self.epoch + 1}", acc, k)
        result["curve"] = curve
        return result
