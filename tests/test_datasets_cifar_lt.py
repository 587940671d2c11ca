"""CIFAR-10-LT / CIFAR-100-LT: the exponential profile, the seeded random subset, the pickle reader.

Expected counts and the subset fingerprint are the reference's (../shared/specs/langevin_coop.md §7.2);
the subset is recomputed in the tests with numpy's *global* legacy RNG, as the reference does.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import pytest
from PIL import Image

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import set_random_seed
from dataset_fixtures import CIFAR10_NAMES, write_cifar10, write_cifar100
from vlprompt.datasets.cifar_lt import class_groups, load_cifar_pickle, long_tail_counts, long_tail_indices
from vlprompt.datasets.splits import DatasetNotFoundError
from vlprompt.trainers.config import get_cfg

RATIOS = (0.005, 0.01, 0.02, 0.1)


def build(root, name: str, ratio: float = 0.01, imb_seed: int = 88, shots: int = -1, subsample: str = "all"):
    cfg = get_cfg()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.IMB_RATIO = ratio
    cfg.DATASET.IMB_SEED = imb_seed
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    set_random_seed(1)
    return DATASET_REGISTRY.get(name)(cfg)


def reference_subset(labels: np.ndarray, counts, seed: int) -> np.ndarray:
    """The reference's selection: np.random.seed, then per class shuffle in place and keep n_c."""
    np.random.seed(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        kept.extend(idx[:n_c].tolist())
    return np.asarray(kept)


def test_profile_matches_reference_counts():
    """n_c = int(n_max * ratio^(c/(C-1))): the spec's CIFAR-10-LT lists and CIFAR-100-LT totals."""
    assert long_tail_counts(5000, 10, 0.005) == [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25]
    assert long_tail_counts(5000, 10, 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts(5000, 10, 0.02) == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert long_tail_counts(5000, 10, 0.1) == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    totals = [sum(long_tail_counts(500, 100, r)) for r in RATIOS]
    assert totals == [9502, 10847, 12608, 19573]
    assert [min(long_tail_counts(500, 100, r)) for r in RATIOS] == [2, 5, 10, 50]


@pytest.mark.parametrize("n_max,n_cls,expected", [
    (5000, 10, [(7, 3, 0), (8, 2, 0), (10, 0, 0), (10, 0, 0)]),
    (500, 100, [(31, 29, 40), (35, 34, 31), (41, 40, 19), (70, 30, 0)]),
])
def test_many_medium_few_group_sizes(n_max, n_cls, expected):
    """many ≥ 100 / few ≤ 20 training images: the spec's group sizes for every ratio."""
    for ratio, sizes in zip(RATIOS, expected):
        groups = class_groups(long_tail_counts(n_max, n_cls, ratio))
        assert (len(groups["many"]), len(groups["medium"]), len(groups["few"])) == sizes


def test_subset_fingerprint_seed_88():
    """labels i % 10, ratio .01, seed 88: the spec's first kept indices and their sum."""
    labels = np.arange(50000) % 10
    counts = long_tail_counts(5000, 10, 0.01)
    kept = long_tail_indices(labels, counts, seed=88)
    assert kept[:5].tolist() == [34520, 31160, 5850, 8220, 13980]
    assert kept[sum(counts[:9]):sum(counts[:9]) + 5].tolist() == [4179, 17359, 36979, 1269, 45289]
    assert int(kept.sum()) == 311209374


@pytest.mark.parametrize("ratio", RATIOS)
def test_cifar10_lt_from_pickles(tmp_path, ratio):
    """Per-class counts follow the profile for every ratio, the subset is the reference's seeded
    one, the test set is the whole balanced one, and each PNG holds the original pixels."""
    rows, labels = write_cifar10(str(tmp_path / "cifar-10-python" / "cifar-10-batches-py"))
    ds = build(tmp_path, "CIFAR10LT", ratio=ratio)
    counts = long_tail_counts(100, 10, ratio)  # n_max = 1000 images / 10 classes
    assert ds.classnames == CIFAR10_NAMES
    assert ds.cls_num_list == counts
    assert [d.label for d in ds.train_x] == [c for c, n in enumerate(counts) for _ in range(n)]
    kept = [int(osp.splitext(osp.basename(d.impath))[0]) for d in ds.train_x]
    assert kept == reference_subset(labels, counts, 88).tolist()
    assert len(ds.test) == 100 and set(np.bincount([d.label for d in ds.test])) == {10}
    assert ds.val is ds.test
    assert ds.groups == class_groups(counts)
    for d, index in list(zip(ds.train_x, kept))[::37]:
        pixels = np.asarray(Image.open(d.impath))
        assert d.classname == CIFAR10_NAMES[labels[index]]
        assert np.array_equal(pixels, rows[index].reshape(3, 32, 32).transpose(1, 2, 0))


def test_same_seed_same_subset_other_seed_differs(tmp_path):
    """DATASET.IMB_SEED decides the subset: equal seeds give equal subsets, another seed does not."""
    write_cifar10(str(tmp_path / "cifar-10-python" / "cifar-10-batches-py"))
    first = [d.impath for d in build(tmp_path, "CIFAR10LT", ratio=0.1).train_x]
    again = [d.impath for d in build(tmp_path, "CIFAR10LT", ratio=0.1).train_x]
    other = [d.impath for d in build(tmp_path, "CIFAR10LT", ratio=0.1, imb_seed=7).train_x]
    assert first == again
    assert first != other and len(first) == len(other)


def test_cifar100_lt_str_keys_and_torchvision_layout(tmp_path):
    """Pickles with str keys, found in torchvision's layout (<root>/cifar-100-python); fine labels."""
    fine = write_cifar100(str(tmp_path / "cifar-100-python"), per_class=5, bytes_keys=False)
    ds = build(tmp_path, "CIFAR100LT", ratio=0.1)
    counts = long_tail_counts(5, 100, 0.1)
    assert ds.classnames == fine and ds.num_classes == 100
    assert ds.cls_num_list == counts and len(ds.train_x) == sum(counts)
    assert len(ds.test) == 100


def test_pickle_reader_bytes_and_str_keys(tmp_path):
    """Both key kinds read to the same str-keyed dict with decoded names."""
    write_cifar10(str(tmp_path / "b"), per_batch=10, n_test=10, bytes_keys=True)
    write_cifar10(str(tmp_path / "s"), per_batch=10, n_test=10, bytes_keys=False)
    for sub in ("b", "s"):
        meta = load_cifar_pickle(str(tmp_path / sub / "batches.meta"))
        batch = load_cifar_pickle(str(tmp_path / sub / "data_batch_1"))
        assert meta["label_names"] == CIFAR10_NAMES
        assert batch["data"].shape == (10, 3072) and batch["labels"][:3] == [0, 1, 2]


def test_base_new_relabels_groups(tmp_path):
    """SUBSAMPLE_CLASSES=new keeps classes 5..9 relabelled 0..4; counts and groups follow."""
    write_cifar10(str(tmp_path / "cifar-10-python" / "cifar-10-batches-py"))
    ds = build(tmp_path, "CIFAR10LT", ratio=0.01, subsample="new")
    counts = long_tail_counts(100, 10, 0.01)[5:]
    assert ds.classnames == CIFAR10_NAMES[5:] and ds.cls_num_list == counts
    assert ds.groups == class_groups(counts)


def test_errors(tmp_path):
    """Missing pickles name the expected folder; few-shot and bad ratios are refused."""
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python/cifar-10-batches-py .*DATASETS\.md#cifar10lt"):
        build(tmp_path, "CIFAR10LT")
    write_cifar10(str(tmp_path / "cifar-10-batches-py"), per_batch=10, n_test=10)
    with pytest.raises(ValueError, match="DATASET.NUM_SHOTS"):
        build(tmp_path, "CIFAR10LT", shots=16)
    with pytest.raises(ValueError, match="DATASET.IMB_RATIO"):
        build(tmp_path, "CIFAR10LT", ratio=100)
