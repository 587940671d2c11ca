"""MLPT: two CoOp prompt learners on one frozen CLIP, trained DivideMix-style under noisy labels.

Paper: "Mutual Learning Between Two Prompt Tuning Mechanisms for Vision-Language Models" (no arXiv version).
Reference implementation: LZHMS/MLPT@8f9708e.  It is DivideMix (Li, Socher, Hoi, arXiv:2002.07394) applied to
two CoOp prompts (Zhou et al., arXiv:2109.01134) that differ only by their random init.

For ``WARMUP_EPOCH`` epochs each branch trains alone on the noisy few-shot set with CE (GCE with
``USE_ROBUSTLOSS``).  Then every epoch starts with a co-divide: each branch's per-sample CE over the pool (the
noisy few-shot set under the test transform) is min-max normalised and a two-component GMM turns it into
p_clean (the posterior of the low-mean component); each branch then trains on the labelled / unlabelled split
made by the *other* branch, with refined targets ``sharpen(w onehot + (1 - w) mean softmax, T)`` on labelled
samples, co-guessed targets ``sharpen(mean softmax, T)`` on unlabelled ones and the loss
``soft-CE + LAMBDA_U * MSE``.  At test time the two branches' logits are summed.  Label noise itself is the
dataset feature ``DATASET.NUM_FP`` (``datasets/label_noise.py``).  The deliberate differences from the reference,
each with the key that restores it, and how the method runs under torchrun: ``docs/methods/mlpt.md``.
"""
from __future__ import annotations

import csv
import logging
import os
import os.path as osp
import random
import warnings
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.data import DatasetWrapper
from dassl.data.data_manager import build_data_loader
from dassl.engine import TRAINER_REGISTRY, TrainingPass, cycle
from dassl.metrics import compute_accuracy
from dassl.utils import all_gather_object, broadcast_object, is_main_process
from vlprompt.datasets import label_noise  # noqa: F401  (registers DATASET.NUM_FP / NOISE_LITERAL)

from .common.custom_clip import CustomCLIP, cosine_logits, l2_normalize
from .common.prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearnerBase
from .common.prompt_trainer import ClipPromptTrainer
from .common.text_encoder import TextEncoder

logger = logging.getLogger(__name__)

BRANCHES = ("prompt_learner1", "prompt_learner2")  # registered names = checkpoint folders (as the reference)
GCE_EPS = 1e-6  # (1 - (p_y + eps)^q) / q, as the reference
# max - min per-sample loss below this: no GMM, every sample is clean (the reference divides by zero there)
DEGENERATE_SPAN = 1e-12
LOSS_DUMP_DIR = "ClipLoss"  # under OUTPUT_DIR, as the reference
SPLIT_RNG_SALT = "mlpt-oracle-split"  # the oracle split draws from random.Random(f"{salt}-{seed}-{epoch}-{branch}")


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.MLPT = CN()
    node = cfg.TRAINER.MLPT
    node.N_CTX = 16  # context vectors per branch (ignored when CTX_INIT is set: its word count is used)
    node.CSC = False  # class-specific contexts (n_cls, N_CTX, D) instead of one generic (N_CTX, D)
    node.CTX_INIT = ""  # words to initialise both contexts from ("" = two independent N(0, INIT_STD^2) draws)
    node.INIT_STD = 0.02  # std of the random context init
    node.PREC = "fp16"  # fp16, fp32 or amp; fp16/amp need CUDA, else fp32 (warned)
    node.CLASS_TOKEN_POSITION = "end"  # end, middle or front
    # Epochs of plain CE (GCE with USE_ROBUSTLOSS) per branch before co-divide (the reference's WARMUP.EPOCH)
    node.WARMUP_EPOCH = 10
    # p_clean > THRESHOLD means predicted clean (the reference's WARMUP.THRESHOLD)
    node.THRESHOLD = 0.5
    node.TEM = 0.5  # sharpening temperature T of the refined and co-guessed targets (p^(1/T), renormalised)
    node.LAMBDA_U = 1.0  # weight of the unlabelled MSE term (the reference: 1, no ramp-up)
    # Beta(ALPHA, ALPHA) drawn once per co-divide step and unused, as the reference (only NumPy's RNG advances,
    # which seeds the GMM's k-means init); 0 = no draw
    node.ALPHA = 4.0
    # True (the reference): per class NUM_SHOTS - NUM_FP predicted-clean and NUM_FP predicted-noisy samples;
    # False: every predicted-clean sample is labelled and every predicted-noisy one unlabelled
    node.ORACLE_SPLIT = True
    node.USE_ROBUSTLOSS = False  # GCE instead of CE in warm-up (the reference's DATASET.USE_ROBUSTLOSS)
    node.GCE_Q = 0.5  # q of the generalised cross-entropy (the reference builds it with 0.5)
    node.GMM_MAX_ITER = 10  # sklearn GaussianMixture(max_iter, tol, reg_covar) as the reference
    node.GMM_TOL = 1e-2
    node.GMM_REG_COVAR = 5e-4
    # Write per-sample losses and p_clean of both branches to OUTPUT_DIR/ClipLoss/clip_<epoch>.csv every this
    # many epochs of the co-divide phase (the reference: 10, as xlsx); 0 = never
    node.LOSS_DUMP_FREQ = 10


# ----------------------------------------------------------------------------- losses and targets


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """``p^(1/T)`` renormalised over the last dim (classes)."""
    powered = probs.pow(1.0 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True)


def refined_targets(weights: Tensor, labels: Tensor, probs: Tensor, temperature: float) -> Tensor:
    """Label refinement: ``sharpen(w * onehot(y) + (1 - w) * p, T)`` for ``w (B,)``, ``y (B,)``, ``p (B, C)``."""
    onehot = F.one_hot(labels, probs.shape[-1]).to(probs.dtype)  # (B, C)
    w = weights.to(probs.dtype).unsqueeze(-1)  # (B, 1)
    return sharpen(w * onehot + (1 - w) * probs, temperature)


def co_guessed_targets(probs_a: Tensor, probs_b: Tensor, temperature: float) -> Tensor:
    """Co-guessing: ``sharpen((p_a + p_b) / 2, T)`` for ``(B, C)`` probabilities of the two branches."""
    return sharpen((probs_a + probs_b) / 2, temperature)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``-(1/B) sum_i sum_c t_ic log softmax(z_i)_c``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def probability_mse(logits: Tensor, targets: Tensor) -> Tensor:
    """``(1/(B C)) sum_i sum_c (softmax(z_i)_c - t_ic)^2``."""
    return (F.softmax(logits, dim=-1) - targets).pow(2).mean()


def gce_loss(logits: Tensor, labels: Tensor, q: float) -> Tensor:
    """Generalised cross-entropy (Zhang & Sabuncu, arXiv:1805.07836): mean of ``(1 - (p_y + 1e-6)^q) / q``."""
    p_y = F.softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
    return ((1 - (p_y + GCE_EPS).pow(q)) / q).mean()


# ----------------------------------------------------------------------------- co-divide


def clean_probability(losses: np.ndarray, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4,
                      random_state=None) -> np.ndarray:
    """Posterior of the low-mean component of a 2-component GMM fitted on min-max normalised ``losses (N,)``.

    Constant (or fewer than 2) losses cannot be divided: every sample is clean (probability 1).
    """
    losses = np.asarray(losses, dtype=np.float64)
    span = float(losses.max() - losses.min()) if losses.size else 0.0
    if losses.size < 2 or not np.isfinite(span) or span < DEGENERATE_SPAN:
        return np.ones_like(losses)
    normed = ((losses - losses.min()) / span).reshape(-1, 1)  # (N, 1)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=10 rarely converges at tol; as the reference
        gmm.fit(normed)
    return gmm.predict_proba(normed)[:, int(gmm.means_.argmin())]


def sample_per_class(indices: Sequence[int], labels: Sequence[int], num_shots: int, rng: random.Random) -> List[int]:
    """Dassl's ``generate_fewshot_dataset`` on pool indices: ``num_shots`` per label, without repeat.

    Labels are visited in order of first appearance; a label with fewer candidates keeps all of them and
    ``num_shots < 1`` keeps everything (the reference's F = 0 case).
    """
    if num_shots < 1:
        return list(indices)
    by_label: Dict[int, List[int]] = {}
    for idx in indices:
        by_label.setdefault(int(labels[idx]), []).append(int(idx))
    out: List[int] = []
    for items in by_label.values():
        out.extend(rng.sample(items, num_shots) if len(items) >= num_shots else items)
    return out


def divide(pred_clean: np.ndarray, labels: Sequence[int], num_clean: int, num_noisy: int, oracle: bool,
           rng: random.Random) -> Tuple[List[int], List[int]]:
    """(labelled, unlabelled) pool indices from a predicted-clean mask; ``oracle`` keeps the reference's per-class
    sizes (``num_clean`` predicted-clean and ``num_noisy`` predicted-noisy samples per label, drawn with ``rng``)."""
    clean = np.flatnonzero(pred_clean).tolist()
    noisy = np.flatnonzero(~pred_clean).tolist()
    if not oracle:
        return clean, noisy
    return sample_per_class(clean, labels, num_clean, rng), sample_per_class(noisy, labels, num_noisy, rng)


def split_rng(seed: int, epoch: int, branch: str) -> random.Random:
    """The oracle split's own random source: a function of (SEED, epoch, trained branch) only, so the split does
    not depend on what else drew from Python's global RNG (e.g. a first run drawing the few-shot set while a
    later run loads it from its cache), on the number of processes, or on a resume."""
    return random.Random(f"{SPLIT_RNG_SALT}-{seed}-{epoch}-{branch}")


def detection_stats(prob_clean: np.ndarray, pred_clean: np.ndarray, is_noisy: np.ndarray) -> Dict[str, float]:
    """How well ``1 - p_clean`` flags the truly noisy labels: counts, precision/recall (%) and AUC."""
    flagged = ~pred_clean
    hits = int((flagged & is_noisy).sum())
    stats = {"n_clean": int(pred_clean.sum()), "n_noisy": int(is_noisy.sum()), "n_flagged": int(flagged.sum()),
             "hits": hits, "precision": 100.0 * hits / max(1, int(flagged.sum())),
             "recall": 100.0 * hits / max(1, int(is_noisy.sum())), "auc": float("nan")}
    if 0 < is_noisy.sum() < is_noisy.size:
        stats["auc"] = float(roc_auc_score(is_noisy, 1.0 - prob_clean))
    return stats


# ----------------------------------------------------------------------------- pool splits


class PoolSplit(Dataset):
    """The items ``indices`` of the pool's train-transform view, whose decoded images stay cached across epochs;
    a batch's ``index`` is the pool index (the key of the GMM weights)."""

    def __init__(self, pool_view: DatasetWrapper, indices: Sequence[int]):
        self.pool_view, self.indices = pool_view, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        # a position in the split, or (position, augmentation seed) from the seeded training sampler
        if isinstance(key, tuple):
            return self.pool_view[(self.indices[key[0]], *key[1:])]
        return self.pool_view[self.indices[key]]


# ----------------------------------------------------------------------------- model


class MLPTCLIP(CustomCLIP):
    """Two prompt learners sharing one frozen CLIP; the logits are the sum of theirs (the test-time ensemble)."""

    per_image_text = False

    def __init__(self, learners: Sequence[PromptLearnerBase], text_encoder: TextEncoder, clip_model: nn.Module):
        super().__init__(clip_model)
        self.prompt_learner1, self.prompt_learner2 = learners
        self.text_encoder = text_encoder

    def encode_text(self, branch: str) -> Tensor:
        """L2-normalised class text features ``(n_cls, E)`` of ``branch`` (one of ``BRANCHES``)."""
        learner = self.get_submodule(branch)
        return l2_normalize(self.text_encoder(learner(), learner.tokenized_prompts))

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        return cosine_logits(image_features, text_features, self.logit_scale).float()  # (B, n_cls)

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return sum(self.logits(image_features, self.encode_text(b)) for b in BRANCHES)  # (B, n_cls)


# ----------------------------------------------------------------------------- trainer


@TRAINER_REGISTRY.register()
class MLPT(ClipPromptTrainer):
    """Mutual Learning of two Prompt Tuning branches (DivideMix on two CoOp prompts).

    "Mutual Learning Between Two Prompt Tuning Mechanisms for Vision-Language Models",
    https://github.com/LZHMS/MLPT (no arXiv version; DivideMix: https://arxiv.org/abs/2002.07394)
    """

    LEARNABLE = BRANCHES
    # Checked under torchrun (tests/test_registry_ddp.py): the pool losses are gathered, the GMM probabilities
    # shared, the split loaders sharded like Dassl's training loaders

    def check_cfg(self, cfg) -> None:
        node, data = cfg.TRAINER.MLPT, cfg.DATASET
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.MLPT.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}; "
                             f"choose one of {', '.join(CLASS_TOKEN_POSITIONS)}")
        if not node.CTX_INIT and node.N_CTX < 1:
            raise ValueError(f"TRAINER.MLPT.N_CTX={node.N_CTX}; use at least 1 context vector or set CTX_INIT")
        if not 0 <= node.WARMUP_EPOCH <= cfg.OPTIM.MAX_EPOCH:
            raise ValueError(f"TRAINER.MLPT.WARMUP_EPOCH={node.WARMUP_EPOCH}; choose 0..OPTIM.MAX_EPOCH "
                             f"({cfg.OPTIM.MAX_EPOCH})")
        if not 0 < node.THRESHOLD < 1:
            raise ValueError(f"TRAINER.MLPT.THRESHOLD={node.THRESHOLD}; choose a probability in (0, 1)")
        if node.TEM <= 0 or node.LAMBDA_U < 0 or not 0 < node.GCE_Q <= 1:
            raise ValueError(f"TRAINER.MLPT: TEM={node.TEM} must be > 0, LAMBDA_U={node.LAMBDA_U} >= 0 and "
                             f"GCE_Q={node.GCE_Q} in (0, 1]")
        if node.ORACLE_SPLIT and data.NUM_SHOTS >= 1 and data.NUM_FP >= data.NUM_SHOTS:
            raise ValueError(f"DATASET.NUM_FP={data.NUM_FP} must be < DATASET.NUM_SHOTS={data.NUM_SHOTS} for the "
                             "oracle split (or set TRAINER.MLPT.ORACLE_SPLIT False)")
        super().check_cfg(cfg)

    # ------------------------------------------------------------------ data and model
    def build_data_manager(self):
        """Dassl's loaders plus the pool (the noisy few-shot set): sequential with the test transform for the
        per-sample losses, and a train-transform view that the per-epoch splits index into."""
        dm = super().build_data_manager()
        cfg = self.cfg
        self.pool = list(dm.dataset.train_x)
        self.pool_labels = np.array([item.label for item in self.pool])
        self.pool_is_noisy = np.array([item.label != item.true_label for item in self.pool])
        self.pool_eval_loader = build_data_loader(
            cfg, sampler_type="SequentialSampler", data_source=self.pool, batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=dm.tfm_test, is_train=False)
        self.pool_train = DatasetWrapper(cfg, self.pool, transform=dm.tfm_train, is_train=True)
        return dm

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.MLPT
        learners = [PromptLearnerBase(classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
                                      class_token_position=node.CLASS_TOKEN_POSITION, init_std=node.INIT_STD)
                    for _ in BRANCHES]  # drawn one after the other from the seeded torch RNG: different inits
        return MLPTCLIP(learners, self.make_text_encoder(clip_model), clip_model)

    def split_loader(self, indices: Sequence[int]) -> DataLoader:
        """Random batches of ``TRAIN_X.BATCH_SIZE`` pool items (train transform); ``index`` = pool index.

        Built by Dassl's ``build_data_loader`` as a training loader (random order, the last incomplete batch
        dropped when there is a full one), so under torchrun each rank yields its slice of the single-process
        batches, augmented as a single process would.
        """
        view = PoolSplit(self.pool_train, indices)
        return build_data_loader(self.cfg, sampler_type="RandomSampler", data_source=[self.pool[i] for i in indices],
                                 batch_size=self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, is_train=True,
                                 dataset_wrapper=lambda *args, **kwargs: view)

    # ------------------------------------------------------------------ epochs
    def training_passes(self):
        """Warm-up: one CE pass per branch.  Then co-divide on both branches, and each branch trains on the
        split the other made (both branches' p_clean are computed before either one is updated)."""
        if self.epoch < self.cfg.TRAINER.MLPT.WARMUP_EPOCH:
            for branch in BRANCHES:
                yield self.warmup_pass(branch)
            return
        probs = self.co_divide()
        for trained, other in (BRANCHES, BRANCHES[::-1]):
            yield self.division_pass(trained, other, probs[other])

    def warmup_pass(self, branch: str) -> TrainingPass:
        return TrainingPass(self.train_loader_x, lambda batch: self.warmup_step(branch, batch), names=[branch])

    def warmup_step(self, branch: str, batch: Mapping[str, Tensor]) -> Dict[str, float]:
        """CE (or GCE) of one branch on a noisy batch."""
        node = self.cfg.TRAINER.MLPT
        image, label = self.parse_batch_train(batch)
        with torch.no_grad():
            image_features = self.model.encode_image(image)  # (B, E); the image tower is frozen
        with self.autocast():
            logits = self.model.logits(image_features, self.model.encode_text(branch))  # (B, C)
        loss = gce_loss(logits, label, node.GCE_Q) if node.USE_ROBUSTLOSS else F.cross_entropy(logits, label)
        self.backward_and_update(loss, names=[branch])
        tag = branch[-1]
        return {f"loss{tag}": loss.item(), f"acc{tag}": compute_accuracy(logits, label)[0].item()}

    @torch.no_grad()
    def per_sample_losses(self) -> Dict[str, np.ndarray]:
        """CE of every pool item against its given label, per branch, indexed by pool position.

        Under torchrun each rank scores its contiguous block of the pool (the loader is sharded) and the blocks
        are gathered, so every rank holds the losses of the whole pool.
        """
        self.set_model_mode("eval")
        text = {b: self.model.encode_text(b) for b in BRANCHES}
        indices: List[np.ndarray] = []
        values: Dict[str, List[np.ndarray]] = {b: [] for b in BRANCHES}
        for batch in self.pool_eval_loader:
            image, label = self.parse_batch_test(batch)
            image_features = self.model.encode_image(image)
            indices.append(batch["index"].numpy())
            for b in BRANCHES:
                ce = F.cross_entropy(self.model.logits(image_features, text[b]), label, reduction="none")
                values[b].append(ce.cpu().numpy())
        local = (np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
                 {b: np.concatenate(v) if v else np.zeros(0, dtype=np.float32) for b, v in values.items()})
        losses = {b: np.zeros(len(self.pool)) for b in BRANCHES}
        for block_indices, block_values in all_gather_object(local):  # rank order; one block in a single process
            for b in BRANCHES:
                losses[b][block_indices] = block_values[b]
        return losses

    def co_divide(self) -> Dict[str, np.ndarray]:
        """p_clean of every pool item from each branch's GMM; logs how many noisy labels each one flagged."""
        node = self.cfg.TRAINER.MLPT
        losses = self.per_sample_losses()
        # Every rank fits the GMMs on the same losses (their k-means init draws from NumPy's global RNG, which
        # must advance alike on every rank); rank 0's probabilities are then used everywhere, so that every
        # rank draws the same split.
        probs = broadcast_object({b: clean_probability(losses[b], node.GMM_MAX_ITER, node.GMM_TOL,
                                                       node.GMM_REG_COVAR) for b in BRANCHES})
        for b in BRANCHES:
            stats = detection_stats(probs[b], probs[b] > node.THRESHOLD, self.pool_is_noisy)
            logger.info(f"co-divide [{b}]: {stats['n_clean']}/{len(self.pool)} predicted clean; flagged "
                        f"{stats['hits']}/{stats['n_noisy']} noisy labels (precision {stats['precision']:.1f}%, "
                        f"recall {stats['recall']:.1f}%, AUC {stats['auc']:.3f})")
            for key in ("auc", "precision", "recall"):
                if np.isfinite(stats[key]):
                    self.write_scalar(f"train/noise_{key}{b[-1]}", stats[key], self.epoch)
        self.dump_losses(losses, probs)
        return probs

    def division_pass(self, trained: str, other: str, prob_clean: np.ndarray) -> TrainingPass:
        """Train ``trained`` on the split made by ``other``'s p_clean; empty splits are guarded."""
        node, data = self.cfg.TRAINER.MLPT, self.cfg.DATASET
        labelled, unlabelled = divide(prob_clean > node.THRESHOLD, self.pool_labels, data.NUM_SHOTS - data.NUM_FP,
                                      data.NUM_FP, node.ORACLE_SPLIT, split_rng(self.cfg.SEED, self.epoch, trained))
        if not labelled:
            logger.warning(f"{other} predicts no clean sample: {trained} runs a warm-up epoch instead")
            return self.warmup_pass(trained)
        unlabelled_iter = cycle(self.split_loader(unlabelled)) if unlabelled else None
        weights = torch.from_numpy(prob_clean).float()
        return TrainingPass(self.split_loader(labelled),
                            lambda batch: self.codivide_step(trained, batch, other, weights, unlabelled_iter),
                            names=[trained])

    def codivide_step(self, trained: str, batch_x: Mapping[str, Tensor], other: str, weights: Tensor,
                      unlabelled_iter: Optional[Iterator]) -> Dict[str, float]:
        """Refined targets on the labelled batch, co-guessed targets on the next unlabelled one."""
        node = self.cfg.TRAINER.MLPT
        if node.ALPHA > 0:
            np.random.beta(node.ALPHA, node.ALPHA)  # the reference's unused MixUp coefficient (RNG parity)
        image_x, label_x = self.parse_batch_train(batch_x)
        w = weights[batch_x["index"]].to(self.device)  # (B_x,)
        # None also when this rank's shard of a split smaller than the global batch is empty (torchrun)
        batch_u = next(unlabelled_iter, None) if unlabelled_iter is not None else None
        with torch.no_grad():
            feat_x = self.model.encode_image(image_x)  # (B_x, E)
            feat_u = self.model.encode_image(batch_u["img"].to(self.device)) if batch_u is not None else None
            text_other = self.model.encode_text(other)  # (C, E): the other branch gets no gradient
        with self.autocast():
            text = self.model.encode_text(trained)  # (C, E), once per step
            logits_x = self.model.logits(feat_x, text)  # (B_x, C)
            logits_u = self.model.logits(feat_u, text) if feat_u is not None else None  # (B_u, C)
        with torch.no_grad():
            probs_x = (logits_x.detach().softmax(-1) + self.model.logits(feat_x, text_other).softmax(-1)) / 2
            targets_x = refined_targets(w, label_x, probs_x, node.TEM)  # (B_x, C)
            if logits_u is not None:
                targets_u = co_guessed_targets(logits_u.detach().softmax(-1),
                                               self.model.logits(feat_u, text_other).softmax(-1), node.TEM)
        loss_x = soft_cross_entropy(logits_x, targets_x)
        loss_u = probability_mse(logits_u, targets_u) if logits_u is not None else torch.zeros_like(loss_x)
        loss = loss_x + node.LAMBDA_U * loss_u
        self.backward_and_update(loss, names=[trained])
        tag = trained[-1]
        return {f"loss{tag}": loss.item(), f"loss_x{tag}": loss_x.item(), f"loss_u{tag}": loss_u.item(),
                f"acc{tag}": compute_accuracy(logits_x, targets_x.argmax(-1))[0].item()}

    def dump_losses(self, losses: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray]) -> None:
        """Every ``LOSS_DUMP_FREQ`` epochs: normalised losses and p_clean per branch, as the reference's xlsx."""
        freq = self.cfg.TRAINER.MLPT.LOSS_DUMP_FREQ
        if freq <= 0 or (self.epoch + 1) % freq != 0 or not is_main_process():
            return
        folder = osp.join(self.output_dir, LOSS_DUMP_DIR)
        os.makedirs(folder, exist_ok=True)
        columns = {}
        for i, b in enumerate(BRANCHES, start=1):
            span = max(float(np.ptp(losses[b])), DEGENERATE_SPAN)
            columns[f"clip{i}_loss"] = (losses[b] - losses[b].min()) / span
            columns[f"clip{i}_prob"] = probs[b]
        with open(osp.join(folder, f"clip_{self.epoch + 1}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns) + ["label", "true_label"])
            for i, item in enumerate(self.pool):
                writer.writerow([f"{columns[c][i]:.6f}" for c in columns] + [item.label, item.true_label])
