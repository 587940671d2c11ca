"""LangevinCoOp: Langevin-dynamics sampling of CoOp prompts and a hard-vote ensemble, for long-tailed CIFAR.

Reference: Walter-pixel/COOP_Langevin_Public@7fe769c ("Langevin Dynamics Sampling of Prompt Distribution for
Vision-Language Model"); spec ``shared/specs/langevin_coop.md``.  Builds on CoOp (Zhou et al., "Learning to Prompt
for Vision-Language Models", arXiv:2109.01134) and SGLD (Welling & Teh, ICML 2011).

Class-specific CoOp prompts (15 context tokens, class token at the end) on a frozen CLIP are trained with a
logit-adjusted cross-entropy, ``CE(100 * cos(img, txt_c) + log(pi_c^tau + 1e-12))`` (§2.3).  Phase 1 trains
without noise and saves the prompt every ``PROMPT_SAVE_FREQ`` epochs (``saved_prompts/prompt_epoch_<e>.pth``);
phase 2 starts from such a file (``--init-from`` / ``INIT_FROM``) at epoch ``e`` (retrained, as the reference,
§10 #6) and runs SGLD (``trainers/common/sgld.py``): noise from epoch ``NOISE_START`` (BURN_IN + 1), and from
epoch ``BURN_IN`` every end-of-epoch prompt enters a FIFO bank of ``MAX_SAMPLES``.  At test time the last
prompt ("one model") and the majority vote of the bank's samples ("K models"; ties -> lowest class index)
predict by the argmax of cosine similarity (no logit adjustment, §2.4); overall and many/medium/few accuracies.

Reference bugs fixed on purpose (literal switch in brackets):
- §5.1 / §10 #1: the one-model accuracy covers the whole test set, not the last test batch
  [``ONE_MODEL_LAST_BATCH`` also logs the last-batch figure, ``OneModel/test_Acc@1_last_batch``].
- §4.2 / §10 #2: phase 2 takes lr and weight decay from ``OPTIM`` and never from the phase-1 optimizer
  state [``INIT_LOAD_OPTIM`` takes them from the checkpoint, as the reference silently does].
- §10 #3: the lr is an explicit function of the epoch, ``LR * GAMMA^#{milestones <= epoch}`` (the reference's
  dead milestone 140 and its m vs m+1 shift between phases do not exist here).
- §10 #8 / #9: the bank is also on disk (``OUTPUT_DIR/sample_bank``, atomic files; survives a restart and
  serves ``--eval-only``) and test image features are computed once per run for all K samples (same
  votes; ``benchmarks/bench_langevin_vote.py``).
- §10 #5: the reference's noise (std ``1e-5 * lr``, T_eff ~ 1e-13) is too small to be Langevin dynamics, so
  the default is textbook SGLD, ``NOISE_MODE sgld_temp``: ``sqrt(2 * lr * T)`` noise at ``TEMP`` (default 1/N,
  the Bayesian posterior of the summed loss). The reference's rule is the literal switch ``NOISE_MODE
  ref_small``, which the reference-setting config ``rn50_ctx15_csc_ld_ep400_batch512.yaml`` (and so
  ``scripts/reproduce/cifar10lt_langevin.sh``) sets to reproduce the seed's table; ``sgld`` is the
  reference's ``var`` mode.
- §9 / §10 #11 / #13 / #17: one process (no DataParallel), fp32 text tower, one ``AllModel/`` tag prefix, a
  seeded noise generator saved in the checkpoint.
Other choices: soft vote = mean of softmax(CLIP logit scale * cos) over the samples; the ``reference``
augmentation is §7.3 (crop-pad-4, flip, RandAugment at 32 px, then resize; ``INPUT.PIXEL_MEAN/STD`` from
the config); the last partial training batch is kept (§7.4).  ``OPTIM.MOMENTUM`` is unused (as there).
"""
from __future__ import annotations

import logging
import math
import os.path as osp
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import (Compose, Normalize, RandAugment, RandomCrop, RandomHorizontalFlip, Resize,
                                    ToTensor)
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.data.transforms import INTERPOLATION_MODES
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import is_distributed, load_checkpoint, progress
from vlprompt.datasets.cifar_lt import CIFAR_SIDE

from .common.prompt_clip import PromptCLIP
from .common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase
from .common.prompt_trainer import ClipPromptTrainer
from .common.sgld import NOISE_MODES, SGLD, SampleBank, VoteAccumulator, atomic_save

logger = logging.getLogger(__name__)

AUGMENTS = ("reference", "dassl")
LR_SCHEDULERS = ("single_step", "multi_step")
BANK_DIR = "sample_bank"  # under OUTPUT_DIR
PROMPT_DIR = "saved_prompts"  # the reference's saved_prompts_at_training
PRIOR_EPS = 1e-12  # log(pi^tau + 1e-12), as the reference


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.LANGEVINCOOP = CN()
    node = cfg.TRAINER.LANGEVINCOOP
    node.N_CTX = 15  # context vectors per prompt (reference config spec_nctx15.yaml)
    node.CSC = True  # class-specific contexts (n_cls, N_CTX, D); False = one generic context
    node.CLASS_TOKEN_POSITION = "end"  # end, middle or front
    node.INIT_STD = 0.02  # std of the random context init (the reference ignores CTX_INIT)
    node.PREC = "fp32"  # fp32 (reference), fp16 or amp (CUDA only)
    node.LA_TAU = 1.0  # logit adjustment: training logits + log(pi_c^LA_TAU + 1e-12); 0 = plain CE
    node.BURN_IN = 200  # first epoch index whose end-of-epoch prompt enters the bank; >= MAX_EPOCH = none (phase 1)
    node.MAX_SAMPLES = 80  # bank size K (FIFO); the ensemble is evaluated once the bank is full
    node.NOISE_MODE = "sgld_temp"  # noise after burn-in: sgld_temp (Langevin), ref_small (literal reference, spec §10 #5), sgld or none
    node.NOISE_SCALE = 1e-5  # ref_small: noise std = NOISE_SCALE * lr
    node.TEMP = -1.0  # sgld_temp: temperature T on the mean loss; -1 = 1 / (number of training images)
    node.NOISE_START = -1  # first epoch index with noise; -1 = BURN_IN + 1 (reference, spec §10 #4)
    node.INIT_FROM = ""  # phase 2: prompt checkpoint to start from (saved_prompts/*.pth, a Dassl or reference one)
    node.START_EPOCH = -1  # phase 2: first epoch index; -1 = the checkpoint's epoch, trained again (spec §10 #6)
    node.INIT_LOAD_OPTIM = False  # literal spec §10 #2: take lr / weight decay from INIT_FROM's optimizer state
    node.PROMPT_SAVE_FREQ = 40  # save saved_prompts/prompt_epoch_<e>.pth when e % FREQ == 0 and at the end; 0 = off
    node.EVAL_FREQ = 20  # also test after epoch e when e > 0 and e % FREQ == 0; 0 = only at the end
    node.SOFT_VOTE = True  # also report the mean-probability vote
    node.ONE_MODEL_LAST_BATCH = False  # literal spec §5.1: also log the one-model accuracy of the last test batch
    node.AUGMENT = "reference"  # reference: spec §7.3 CIFAR pipeline; dassl: INPUT.TRANSFORMS
    node.TRAIN_DROP_LAST = False  # False keeps the last partial training batch (reference); True = Dassl


def lr_at_epoch(epoch: int, base_lr: float, scheduler: str, stepsize, gamma: float) -> float:
    """Learning rate of epoch index ``epoch``: single_step decays every ``stepsize``, multi_step at each milestone."""
    steps = [int(s) for s in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize]) if int(s) > 0]
    if scheduler == "single_step":
        n_decays = epoch // steps[0] if steps else 0
    else:
        n_decays = sum(epoch >= m for m in steps)
    return base_lr * gamma ** n_decays


def log_prior(class_counts: Sequence[int], tau: float) -> Tensor:
    """``log(pi_c^tau + 1e-12)`` with ``pi_c = n_c / sum(n)``: the logit adjustment of Menon et al. ``(C,)``."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return torch.log((counts / counts.sum()) ** tau + PRIOR_EPS).float()


def group_accuracies(pred: Tensor, labels: Tensor, groups: Mapping[str, Sequence[int]], num_classes: int
                     ) -> Dict[str, float]:
    """Mean per-class accuracy (%) over each group's classes; NaN for a group without test images."""
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels.cpu(), (pred == labels).double().cpu())
    total = torch.bincount(labels.cpu(), minlength=num_classes).double()
    out = {}
    for name, classes in groups.items():
        classes = [c for c in classes if total[c] > 0]
        out[name] = float(100.0 * (correct[classes] / total[classes]).mean()) if classes else math.nan
    return out


def reference_transforms(cfg) -> Tuple[Compose, Compose]:
    """Spec §7.3: crop(32, pad) + flip + RandAugment at the native 32 px, then resize and normalise."""
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    train = Compose([RandomCrop(CIFAR_SIDE, padding=cfg.INPUT.CROP_PADDING), RandomHorizontalFlip(),
                     RandAugment(num_ops=cfg.INPUT.RANDAUGMENT_N, magnitude=cfg.INPUT.RANDAUGMENT_M),
                     Resize(size, interpolation=interp), ToTensor(), normalize])
    test = Compose([Resize(size, interpolation=interp), ToTensor(), normalize])
    return train, test


@TRAINER_REGISTRY.register()
class LangevinCoOp(ClipPromptTrainer):
    """Langevin-dynamics sampling of CoOp prompts with a hard-vote ensemble.

    "Langevin Dynamics Sampling of Prompt Distribution for Vision-Language Model",
    https://github.com/Walter-pixel/COOP_Langevin_Public (CoOp: https://arxiv.org/abs/2109.01134)
    """

    LEARNABLE = ("prompt_learner",)
    CLI_FLAGS = {"--init-from": ("TRAINER.LANGEVINCOOP.INIT_FROM", "phase 2: the phase-1 prompt checkpoint to start from")}

    # ------------------------------------------------------------------ config and data
    def check_cfg(self, cfg) -> None:
        node, name = cfg.TRAINER.LANGEVINCOOP, "TRAINER.LANGEVINCOOP"
        if is_distributed():
            raise ValueError("LangevinCoOp runs in one process (langevin_coop.md §9); launch train.py without torchrun")
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
            raise ValueError(f"OPTIM.NAME={cfg.OPTIM.NAME!r}; LangevinCoOp trains with its SGLD optimizer: set OPTIM.NAME sgld")
        if cfg.OPTIM.LR_SCHEDULER not in LR_SCHEDULERS or cfg.OPTIM.WARMUP_EPOCH > 0:
            raise ValueError(f"OPTIM.LR_SCHEDULER={cfg.OPTIM.LR_SCHEDULER!r}, WARMUP_EPOCH={cfg.OPTIM.WARMUP_EPOCH}; "
                             f"LangevinCoOp supports {', '.join(LR_SCHEDULERS)} without warmup")
        if node.INIT_FROM and not osp.isfile(node.INIT_FROM):
            raise FileNotFoundError(f"{name}.INIT_FROM={node.INIT_FROM} is not a file; pass a phase-1 "
                                    f"{PROMPT_DIR}/prompt_epoch_<e>.pth")
        if node.AUGMENT not in AUGMENTS:
            raise ValueError(f"{name}.AUGMENT={node.AUGMENT!r}; choose one of {', '.join(AUGMENTS)}")
        super().check_cfg(cfg)

    def build_train_transform(self):
        return reference_transforms(self.cfg)[0] if self.cfg.TRAINER.LANGEVINCOOP.AUGMENT == "reference" else None

    def build_test_transform(self):
        return reference_transforms(self.cfg)[1] if self.cfg.TRAINER.LANGEVINCOOP.AUGMENT == "reference" else None

    def build_data_manager(self):
        dm = super().build_data_manager()
        if not self.cfg.TRAINER.LANGEVINCOOP.TRAIN_DROP_LAST and dm.train_loader_x.drop_last:
            dm.set_split("train_x", dm.split_items["train_x"], drop_last=False)  # the reference keeps it
        return dm

    # ------------------------------------------------------------------ model
    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.LANGEVINCOOP
        prompt_learner = PromptLearnerBase(classnames, clip_model, n_ctx=node.N_CTX, ctx_init="", csc=node.CSC,
                                           class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD)
        return PromptCLIP(prompt_learner, self.make_text_encoder(clip_model), clip_model)

    def build_optimizer_and_scheduler(self, name: str, module: nn.Module) -> tuple:
        """SGLD over the prompt only (noise-free until ``before_epoch`` says otherwise); lr set per epoch."""
        node = self.cfg.TRAINER.LANGEVINCOOP
        temperature = node.TEMP if node.TEMP >= 0 else 1.0 / len(self.dm.dataset.train_x)
        optim = SGLD(module.parameters(), lr=self.cfg.OPTIM.LR, weight_decay=self.cfg.OPTIM.WEIGHT_DECAY,
                     noise_mode="none", temperature=temperature, noise_scale=node.NOISE_SCALE)
        return optim, None

    def build_model(self) -> None:
        super().build_model()
        cfg, node = self.cfg, self.cfg.TRAINER.LANGEVINCOOP
        self.prompt_learner = self.model.prompt_learner
        self.optim = self._optims["prompt_learner"]
        counts = getattr(self.dm.dataset, "cls_num_list", None)
        if counts is None:
            counts = np.bincount([d.label for d in self.dm.dataset.train_x], minlength=self.num_classes).tolist()
        self.class_log_prior = log_prior(counts, node.LA_TAU).to(self.device)  # (C,)
        self.base_lr, self.weight_decay = cfg.OPTIM.LR, cfg.OPTIM.WEIGHT_DECAY
        self.noise_start = node.NOISE_START if node.NOISE_START >= 0 else node.BURN_IN + 1
        self.bank = SampleBank(osp.join(cfg.OUTPUT_DIR, BANK_DIR), node.MAX_SAMPLES)
        self.eval_features: Dict[str, Tuple[Tensor, Tensor]] = {}  # split -> (features, labels), frozen encoder
        self.epoch_stats = {"loss": 0.0, "correct": 0.0, "n": 0}
        self.last_results: Dict[str, Dict] = {}  # the latest test(): one_model / ensemble totals and accuracies

    # ------------------------------------------------------------------ training
    def compute_loss(self, output: Tensor, label: Tensor) -> Tensor:
        """Logit-adjusted cross-entropy (spec §2.3): ``CE(logits + log(pi^tau + 1e-12), y)``."""
        return F.cross_entropy(output.float() + self.class_log_prior, label)

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
        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict", ckpt.get("prompt_learner_state"))  # ours / Dassl's, or the reference's
        if state is None or not ("at_epoch" in ckpt or "epoch" in ckpt):
            raise KeyError(f"{path}: expected a prompt checkpoint with state_dict and at_epoch (or Dassl's epoch)")
        self.prompt_learner.load_state_dict(self.drop_frozen_buffers(state), strict=True)
        at_epoch = int(ckpt["at_epoch"]) if "at_epoch" in ckpt else int(ckpt["epoch"]) - 1
        if node.INIT_LOAD_OPTIM:  # literal spec §10 #2: the checkpoint's optimizer wins over OPTIM.LR / WEIGHT_DECAY
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
        if stats["n"]:
            self.write_scalar("OneModel/train_loss_main", stats["loss"] / stats["n"], e)
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
        path = osp.join(self.output_dir, PROMPT_DIR, f"prompt_epoch_{epoch}.pth")
        hparams = {"initial_lr": self.base_lr, "lr": self.get_current_lr(), "weight_decay": self.weight_decay}
        state = {k: v.detach().cpu() for k, v in self.prompt_learner.state_dict().items()}
        atomic_save({"state_dict": state, "at_epoch": epoch, "optim_hparams": hparams}, path)
        logger.info(f"Prompt saved to {path}")

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="") -> None:
        super().save_model(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)
        if not model_name and osp.abspath(osp.join(directory, BANK_DIR)) == osp.abspath(self.bank.directory):
            self.bank.prune()  # a resume from this checkpoint needs only the current window

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load the prompt, and the bank as it was at that checkpoint (``<directory>/sample_bank``)."""
        super().load_model(directory, epoch)
        if directory:
            self.bank = SampleBank(osp.join(directory, BANK_DIR), self.cfg.TRAINER.LANGEVINCOOP.MAX_SAMPLES)
            self.bank.restore(before_epoch=epoch)  # Dassl's epoch N = after N epochs: sample indices < N

    # ------------------------------------------------------------------ evaluation
    def image_features(self, split: str, loader) -> Tuple[Tensor, Tensor]:
        """L2-normalised image features ``(N, E)`` and labels ``(N,)`` of ``split``, encoded once per run."""
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
        self.last_results = {"one_model": {"total": len(labels), "accuracy": results["accuracy"],
                                           **self.report_groups("OneModel", "", pred, labels, split)}}
        self.write_scalar(f"OneModel/{split}_Acc@1", results["accuracy"], self.epoch)
        if self.cfg.TRAINER.LANGEVINCOOP.ONE_MODEL_LAST_BATCH:  # literal spec §5.1
            n_last = len(labels) - (math.ceil(len(labels) / loader.batch_size) - 1) * loader.batch_size
            acc_last = 100.0 * (pred[-n_last:] == labels[-n_last:]).double().mean().item()
            logger.info(f"* last_batch_accuracy: {acc_last:.1f}% ({n_last} images, the reference's OneModel figure)")
            self.write_scalar(f"OneModel/{split}_Acc@1_last_batch", acc_last, self.epoch)
        if self.bank.is_full:
            self.last_results["ensemble"] = self.test_ensemble(features, labels, split)
        elif len(self.bank):
            logger.warning(f"Sample bank holds {len(self.bank)} of {self.bank.capacity} samples; ensemble skipped")
        return results["accuracy"]

    def report_groups(self, prefix: str, name: str, pred: Tensor, labels: Tensor, split: str) -> Dict[str, float]:
        """Log and write many/medium/few accuracies when the dataset defines ``groups``; return them."""
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
                self.write_scalar(f"{prefix}/{split}_acc_{group}", acc, self.epoch)
        logger.info("\n".join(lines))
        return {f"{group}_accuracy": acc for group, acc in accs.items()}

    def test_ensemble(self, features: Tensor, labels: Tensor, split: str) -> Dict[str, float]:
        """Hard (and soft) vote of the bank's samples on cached image features: one text pass per sample."""
        votes = VoteAccumulator(len(labels), self.num_classes, features.device)
        current = {k: v.clone() for k, v in self.prompt_learner.state_dict().items()}
        curve = []
        try:
            for _, state in progress(list(reversed(self.bank.items())), "ensemble"):  # newest first
                self.prompt_learner.load_state_dict(state)
                votes.add_logits(self.logits(features))
                curve.append(100.0 * (votes.hard() == labels).double().mean().item())
        finally:
            self.prompt_learner.load_state_dict(current)
        hard = votes.hard()
        epochs = self.bank.epochs
        result = {"total": len(labels), "num_samples": len(epochs), "hard_vote_accuracy": curve[-1]}
        lines = [f"=> ensemble result ({len(epochs)} samples, epoch indices {epochs[0]}-{epochs[-1]})",
                 f"* total: {len(labels):,}", f"* hard_vote_accuracy: {curve[-1]:.1f}%"]
        if self.cfg.TRAINER.LANGEVINCOOP.SOFT_VOTE:
            result["soft_vote_accuracy"] = 100.0 * (votes.soft() == labels).double().mean().item()
            lines.append(f"* soft_vote_accuracy: {result['soft_vote_accuracy']:.1f}%")
            self.write_scalar(f"AllModel/{split}_Acc@1_soft", result["soft_vote_accuracy"], self.epoch)
        logger.info("\n".join(lines))
        result.update({f"hard_vote_{k}": v for k, v in
                       self.report_groups("AllModel", "hard_vote_", hard, labels, split).items()})
        self.write_scalar(f"AllModel/{split}_Acc@1", curve[-1], self.epoch)
        for k, acc in enumerate(curve, start=1):  # k newest samples; k = 1 is the one-model prediction
            self.write_scalar(f"AllModel/{split}_Acc@1_vs_num_samples/epoch_{self.epoch + 1}", acc, k)
        result["curve"] = curve
        return result
