"""Label noise as a dataset feature (``datasets/label_noise.py``, MLPT's noisy-label protocol).

Checked: exactly NUM_FP wrong labels per class (by true class and by given label), the same noise for the same
seed, the reference's literal ``make_noise`` on a small class-sorted list (re-written here as the reference
loop), the cache next to the few-shot split, and the DataManager hook (noisy ``label`` + clean ``true_label``).
"""
from __future__ import annotations

import logging
import os.path as osp
import random
from collections import Counter

import pytest

from dassl.data.datasets import Datum, DatasetBase
from vlprompt.datasets import label_noise
from vlprompt.datasets.label_noise import (
    NOISE_RNG_SALT,
    apply_label_noise,
    noise_cache_path,
    per_class_noise,
    reference_noise_path,
)


def _cfg(num_fp: int, seed: int = 1, literal: bool = False, shots: int = 16, name: str = "Fake"):
    from vlprompt.trainers.config import get_cfg

    cfg = get_cfg()
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.NUM_FP = num_fp
    cfg.DATASET.NOISE_LITERAL = literal
    cfg.SEED = seed
    return cfg


def _fake_dataset(folder: str, num_classes: int = 6, shots: int = 16, tag: str = "img") -> DatasetBase:
    """A class-grouped few-shot list (as Dassl builds it) with paths under ``folder``."""
    items = [Datum(impath=osp.join(folder, "images", f"{tag}_{c}_{k}.jpg"), label=c, classname=f"class{c}",
                   check_file=False) for c in range(num_classes) for k in range(shots)]
    dataset = DatasetBase(train_x=items, val=items[:2], test=items[:3])
    dataset.dataset_dir = folder
    return dataset


@pytest.mark.parametrize("num_fp", [1, 4, 8, 15])
@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_exactly_num_fp_wrong_labels_per_class(num_classes, num_fp):
    labels = [c for c in range(num_classes) for _ in range(16)]
    random.Random(0).shuffle(labels)
    noisy = per_class_noise(labels, num_fp, random.Random(7))
    wrong_by_true = Counter(t for t, n in zip(labels, noisy) if t != n)
    wrong_by_given = Counter(n for t, n in zip(labels, noisy) if t != n)
    assert all(wrong_by_true[c] == num_fp for c in range(num_classes)), wrong_by_true
    assert all(wrong_by_given[c] == num_fp for c in range(num_classes)), wrong_by_given
    assert Counter(noisy) == Counter(labels)  # every label keeps its 16 shots
    assert set(noisy) <= set(range(num_classes))


def test_small_class_gets_all_its_samples_flipped_and_warns(caplog):
    labels = [0] * 16 + [1] * 16 + [2] * 3
    with caplog.at_level(logging.WARNING, logger="vlprompt.datasets.label_noise"):
        noisy = per_class_noise(labels, 4, random.Random(0))
    wrong = Counter(t for t, n in zip(labels, noisy) if t != n)
    assert wrong == {0: 4, 1: 4, 2: 3}
    assert "class 2 has only 3 samples" in caplog.text


def test_same_seed_same_noise_other_seed_other_noise(tmp_path):
    a = apply_label_noise(_fake_dataset(str(tmp_path / "a")), _cfg(4, seed=1))
    b = apply_label_noise(_fake_dataset(str(tmp_path / "b")), _cfg(4, seed=1))  # no cache shared with a
    c = apply_label_noise(_fake_dataset(str(tmp_path / "c")), _cfg(4, seed=2))
    labels = [[item.label for item in d.train_x] for d in (a, b, c)]
    assert labels[0] == labels[1]
    assert labels[0] != labels[2]
    assert [item.true_label for item in a.train_x] == [c for c in range(6) for _ in range(16)]


def _reference_make_noise(items, num_fp, rng):
    """The reference loop (LZHMS/MLPT make_noise): the first num_fp items get randint(0, C - 1), C = max label + 1."""
    num_classes = max(item["label"] for item in items) + 1
    for position, item in enumerate(items):
        if position >= num_fp:
            break
        item["label"] = rng.randint(0, num_classes - 1)
    return items


@pytest.mark.parametrize("num_fp", [2, 5])
def test_literal_mode_reproduces_reference_make_noise(tmp_path, num_fp):
    dataset = _fake_dataset(str(tmp_path), num_classes=3, shots=4)  # sorted: 0 0 0 0 1 1 1 1 2 2 2 2
    expected = _reference_make_noise([{"label": item.label} for item in dataset.train_x], num_fp,
                                     random.Random(f"{NOISE_RNG_SALT}-{5}"))
    noisy = apply_label_noise(dataset, _cfg(num_fp, seed=5, literal=True, shots=4)).train_x
    assert [item.label for item in noisy] == [item["label"] for item in expected]
    assert all(item.label == item.true_label for item in noisy[num_fp:])  # nothing after the first num_fp
    assert [item.true_label for item in noisy] == [c for c in range(3) for _ in range(4)]
    # cached under our own name; the reference's file name is never written (an MLPT run would read it)
    assert osp.basename(noise_cache_path(str(tmp_path), 4, num_fp, 5, literal=True)) == \
        f"shot_4-numfp_{num_fp}-literal-seed_5.pkl"
    assert osp.exists(noise_cache_path(str(tmp_path), 4, num_fp, 5, literal=True))
    assert not osp.exists(reference_noise_path(str(tmp_path), 4, num_fp, 5))


def test_literal_mode_reads_a_reference_pickle(tmp_path):
    """A pickle at the reference's path (absolute paths of another machine, no true_label) is used as is."""
    import pickle

    folder = str(tmp_path / "dtd")
    dataset = _fake_dataset(folder, num_classes=3, shots=4)
    foreign = []
    for position, item in enumerate(dataset.train_x):
        datum = Datum(impath=item.impath.replace(str(tmp_path), "/home/someone/data"), label=item.label,
                      classname=item.classname, check_file=False)
        datum._label = 2 if position == 0 else item.label  # the reference corrupted item 0 only
        foreign.append(datum)
    path = reference_noise_path(folder, 4, 1, 1)
    assert osp.basename(path) == "shot_4-numfp_1-seed_1.pkl"  # the reference's name
    import os

    os.makedirs(osp.dirname(path))
    with open(path, "wb") as f:
        pickle.dump({"train": foreign, "val": []}, f)
    noisy = apply_label_noise(dataset, _cfg(1, literal=True, shots=4)).train_x
    assert [item.label for item in noisy] == [2, 0, 0, 0] + [1] * 4 + [2] * 4
    assert noisy[0].true_label == 0 and noisy[0].is_noisy


def test_cache_is_written_next_to_the_fewshot_split_and_reused(tmp_path, monkeypatch, caplog):
    folder = str(tmp_path)
    first = apply_label_noise(_fake_dataset(folder), _cfg(3))
    path = noise_cache_path(folder, 16, 3, 1, literal=False)
    assert path == osp.join(folder, "split_fewshot", "shot_16-numfp_3-perclass-seed_1.pkl")
    assert osp.exists(path)

    def _must_not_run(*args, **kwargs):
        raise AssertionError("the cached noise should have been loaded")

    monkeypatch.setattr(label_noise, "per_class_noise", _must_not_run)
    second = apply_label_noise(_fake_dataset(folder), _cfg(3))
    assert [i.label for i in second.train_x] == [i.label for i in first.train_x]
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="vlprompt.datasets.label_noise"):
        other = apply_label_noise(_fake_dataset(folder, tag="other"), _cfg(3))  # another few-shot draw
    assert "does not match" in caplog.text
    assert sum(i.is_noisy for i in other.train_x) == 3 * 6


def test_no_noise_is_a_no_op_and_multilabel_is_refused(tmp_path):
    dataset = _fake_dataset(str(tmp_path))
    before = list(dataset.train_x)
    assert apply_label_noise(dataset, _cfg(0)).train_x == before
    assert not osp.exists(osp.join(str(tmp_path), "split_fewshot"))
    multi = DatasetBase(train_x=[Datum(impath="x.jpg", label=(0, 1), check_file=False)], classnames=["a", "b"])
    with pytest.raises(ValueError, match="multi-label"):
        apply_label_noise(multi, _cfg(1))
    with pytest.raises(ValueError, match="DATASET.NUM_FP=-1"):
        apply_label_noise(dataset, _cfg(-1))


def test_data_manager_hook_gives_noisy_label_and_clean_true_label(data_root):
    from dassl.data import DataManager

    cfg = _cfg(4, seed=3, name="Synthetic")
    cfg.DATASET.ROOT = data_root
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 160
    dm = DataManager(cfg)
    train = dm.dataset.train_x
    assert Counter(t.true_label for t in train if t.is_noisy) == {c: 4 for c in range(10)}
    assert not any(item.is_noisy for item in dm.dataset.test + dm.dataset.val)
    batch = next(iter(dm.train_loader_x))
    flipped = (batch["label"] != batch["true_label"]).sum().item()
    assert flipped == 40  # the whole 160-sample set in one batch: 4 per class x 10 classes
