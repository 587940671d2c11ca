"""Label noise as a dataset feature: ``DATASET.NUM_FP`` wrongly labelled few-shot samples per class.

Any trainer can train under noise: ``DataManager`` calls ``apply_label_noise(dataset, cfg)`` right after the
dataset is built, so ``train_x`` (the few-shot training set, after base/new subsampling) carries the noisy
labels while every ``Datum`` keeps its clean label in ``true_label`` (the data loaders return both, so a
method can report how many noisy samples it flagged).  ``val`` and ``test`` stay clean.

Protocol, from MLPT's noisy-label experiments ("Mutual Learning Between Two Prompt Tuning Mechanisms for
Vision-Language Models", reference LZHMS/MLPT@8f9708e, ``datasets/`` and its ``make_noise``):

- Default, per class: for every class, exactly ``NUM_FP`` of its few-shot samples get a wrong label, and every
  label is given to exactly ``NUM_FP`` samples of other classes.  The chosen samples' labels are a random
  permutation of the multiset "each class ``NUM_FP`` times" with no sample keeping its own class, so both
  groupings hold: ``NUM_FP`` noisy samples per true class *and* per given label, and each label still has its
  ``NUM_SHOTS`` samples.  That is the baselines' protocol (F of the S shots of each label are images of other
  classes) realised inside the sampled few-shot set.
- ``DATASET.NOISE_LITERAL True``: the reference MLPT ``make_noise`` (a reference bug): only the first
  ``NUM_FP`` items of the class-grouped list get ``randint(0, C - 1)``, which may even be the true label, so
  roughly one class is corrupted.  Use it only to reproduce the reference logs.  A pickle written by the
  reference (``split_fewshot/shot_{S}-numfp_{F}-seed_{seed}.pkl``) is read as is in this mode; otherwise the
  draws come from the seeded RNG below, not from the global stream the reference used, and the few extra class-0
  items its expand pool corrupted in a first run are not reproduced.

Both are deterministic for a given ``SEED`` (their own ``random.Random``, independent of the global stream) and
are cached next to the few-shot split: ``<dataset_dir>/split_fewshot/shot_{S}-numfp_{F}-{perclass|literal}-seed_
{seed}[-{subsample}].pkl`` holding ``{"train": [Datum]}`` (absolute paths, as CoOp's caches).  These names are
our own: the reference's file name is only ever read, never written, because our draws differ from the ones an
MLPT run would make, and an MLPT run must not pick ours up silently.  A cache that no longer matches the few-shot
set (other images or order) is rebuilt with a warning.
"""
from __future__ import annotations

import logging
import os.path as osp
import random
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from dassl.config import register_cfg_defaults
from dassl.data.datasets import Datum, DatasetBase, register_dataset_postprocess
from dassl.utils import is_main_process

from .splits import load_datum_pickle, save_datum_pickle

logger = logging.getLogger(__name__)

NOISE_RNG_SALT = "label-noise"  # the noise RNG is random.Random(f"{salt}-{seed}"): independent of the global one


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    # Wrongly labelled samples per class among the few-shot training samples (MLPT's --num-fp; 0 = clean labels)
    cfg.DATASET.NUM_FP = 0
    # True = the reference MLPT make_noise (LZHMS/MLPT@8f9708e): only the first NUM_FP items of the class-grouped
    # few-shot list get a random label in 0..C-1 (possibly the true one); only to reproduce its logs
    cfg.DATASET.NOISE_LITERAL = False


# ----------------------------------------------------------------------------- noise generators


def per_class_noise(labels: Sequence[int], num_fp: int, rng: random.Random) -> List[int]:
    """Noisy labels with exactly ``min(num_fp, n_c)`` wrong labels per true class ``c`` and per given label ``c``.

    Args:
        labels: clean labels of the samples (any order).
        num_fp: noisy samples wanted per class.
        rng: the random source (sample choice and label assignment).

    Returns:
        The noisy labels, same order; a sample's noisy label differs from its clean one iff it was chosen.
    """
    if num_fp <= 0:
        return list(labels)
    by_class: Dict[int, List[int]] = OrderedDict()
    for idx, label in enumerate(labels):
        by_class.setdefault(label, []).append(idx)
    if len(by_class) < 2:
        raise ValueError(f"DATASET.NUM_FP={num_fp} needs at least 2 classes to flip labels between")
    chosen: List[int] = []  # sample indices that become noisy
    receivers: List[int] = []  # the labels they receive: class c as often as c gives samples away
    for label in sorted(by_class):
        idxs = by_class[label]
        k = min(num_fp, len(idxs))
        if k < num_fp:
            logger.warning(f"class {label} has only {len(idxs)} samples: {k} of them get a wrong label "
                           f"instead of DATASET.NUM_FP={num_fp}")
        chosen.extend(rng.sample(idxs, k))
        receivers.extend([label] * k)
    rng.shuffle(receivers)
    true = [labels[i] for i in chosen]
    _remove_fixed_points(true, receivers, rng)
    noisy = list(labels)
    for idx, label in zip(chosen, receivers):
        noisy[idx] = label
    return noisy


def _remove_fixed_points(true: Sequence[int], new: List[int], rng: random.Random) -> None:
    """Swap entries of ``new`` in place until ``new[i] != true[i]`` everywhere (multiset of ``new`` unchanged).

    Each swap fixes position ``i`` and gives ``j`` a label other than ``true[j]``, so the number of collisions
    strictly decreases; a swap partner exists unless one class holds more than half of the chosen samples.
    """
    for i in range(len(new)):
        if new[i] != true[i]:
            continue
        partners = [j for j in range(len(new)) if new[j] != true[i] and true[j] != new[i]]
        if not partners:
            raise ValueError(f"cannot give class {true[i]} wrong labels: it holds more than half of the noisy "
                             f"samples; lower DATASET.NUM_FP or use more classes")
        j = rng.choice(partners)
        new[i], new[j] = new[j], new[i]


def literal_noise(labels: Sequence[int], num_fp: int, rng) -> List[int]:
    """The reference ``make_noise``: items ``0..num_fp-1`` get ``rng.randint(0, C - 1)``.

    ``C`` is ``max(labels) + 1``; ``rng`` is a ``random.Random`` (or the ``random`` module).  On a
    class-grouped list this corrupts about ``num_fp`` items of the first class in total, not per class.
    """
    num_classes = max(labels) + 1
    noisy = list(labels)
    for idx in range(min(num_fp, len(noisy))):
        noisy[idx] = rng.randint(0, num_classes - 1)
    return noisy


# ----------------------------------------------------------------------------- dataset hook


def noise_cache_path(dataset_dir: str, num_shots: int, num_fp: int, seed: int, literal: bool,
                     subsample: str = "all") -> str:
    """``split_fewshot/shot_{S}-numfp_{F}-{perclass|literal}-seed_{seed}[-{subsample}].pkl`` under ``dataset_dir``.

    A name no other codebase reads (see ``reference_noise_path`` for the reference's own file).
    """
    mode = "literal" if literal else "perclass"
    tail = "" if subsample == "all" else f"-{subsample}"
    return osp.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-numfp_{num_fp}-{mode}-seed_{seed}{tail}.pkl")


def reference_noise_path(dataset_dir: str, num_shots: int, num_fp: int, seed: int) -> str:
    """Where the reference MLPT caches its noisy few-shot set: read in literal mode, never written by us."""
    return osp.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-numfp_{num_fp}-seed_{seed}.pkl")


def with_labels(items: Sequence[Datum], noisy: Sequence[int], true: Sequence[int]) -> List[Datum]:
    """Copies of ``items`` with ``label`` = ``noisy[i]`` and ``true_label`` = ``true[i]``."""
    out = []
    for item, label, clean in zip(items, noisy, true):
        clone = Datum.__new__(Datum)
        clone.__dict__.update(item.__dict__)
        clone._label = int(label)
        clone._true_label = int(clean)
        out.append(clone)
    return out


def _cached_labels(path: str, dataset_dir: str, train: Sequence[Datum]) -> Optional[List[int]]:
    """Noisy labels from the cache at ``path`` if it holds exactly ``train``'s images in order, else ``None``."""
    if not osp.exists(path):
        return None
    cached = load_datum_pickle(path, dataset_dir).get("train") or []
    same = len(cached) == len(train) and all(
        osp.normpath(a.impath) == osp.normpath(b.impath) for a, b in zip(cached, train))
    if not same:
        logger.warning(f"label-noise cache {path} does not match the current few-shot set; rebuilding it")
        return None
    logger.info(f"Loading noisy labels from {path}")
    return [int(item.label) for item in cached]


def _cache_dir(dataset: DatasetBase) -> Optional[str]:
    """The dataset's folder when it is an existing absolute path (where ``split_fewshot/`` lives)."""
    folder = getattr(dataset, "dataset_dir", "")
    return folder if folder and osp.isabs(folder) and osp.isdir(folder) else None


@register_dataset_postprocess
def apply_label_noise(dataset: DatasetBase, cfg) -> DatasetBase:
    """Give ``dataset.train_x`` ``DATASET.NUM_FP`` noisy labels per class (in place; returns ``dataset``).

    A no-op when the key is absent or 0.  Multi-label data cannot take this noise (one-line error).
    """
    num_fp = int(cfg.DATASET.get("NUM_FP", 0))
    if num_fp == 0:
        return dataset
    if num_fp < 0:
        raise ValueError(f"DATASET.NUM_FP={num_fp}; it must be >= 0 (noisy samples per class)")
    train = list(dataset.train_x)
    if train and train[0].is_multilabel:
        raise ValueError(f"DATASET.NUM_FP={num_fp}: {cfg.DATASET.NAME} is multi-label; label noise needs single-label "
                         "data (set DATASET.NUM_FP 0)")
    literal = bool(cfg.DATASET.get("NOISE_LITERAL", False))
    true = [int(item.true_label) for item in train]
    folder = _cache_dir(dataset)
    path = None
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    if folder is not None:
        path = noise_cache_path(folder, cfg.DATASET.NUM_SHOTS, num_fp, cfg.SEED, literal, subsample)
    noisy = _cached_labels(path, folder, train) if path else None
    if noisy is None and path and literal and subsample == "all":  # the reference ran without base/new subsets
        noisy = _cached_labels(reference_noise_path(folder, cfg.DATASET.NUM_SHOTS, num_fp, cfg.SEED), folder, train)
    generated = noisy is None
    if generated:
        rng = random.Random(f"{NOISE_RNG_SALT}-{cfg.SEED}")
        noisy = literal_noise(true, num_fp, rng) if literal else per_class_noise(true, num_fp, rng)
    noisy_train = with_labels(train, noisy, true)
    if path and generated and is_main_process():  # torchrun: every rank draws the same labels, rank 0 writes them
        save_datum_pickle({"train": noisy_train}, path, folder)
        logger.info(f"Saved noisy labels to {path}")
    n_noisy = sum(n != t for n, t in zip(noisy, true))
    mode = "literal (first NUM_FP items, as the reference's make_noise)" if literal else "per class"
    logger.info(f"Label noise: DATASET.NUM_FP={num_fp}, {mode}: {n_noisy} of {len(train)} training labels are wrong")
    dataset._train_x = noisy_train
    return dataset


def noise_mask(items: Sequence[Datum]) -> List[bool]:
    """Whether each item's given label differs from its clean one."""
    return [item.label != item.true_label for item in items]
