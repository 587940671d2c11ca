"""Few-shot sampling semantics, base/new subsampling, the synthetic dataset and DatasetWrapper items."""
import pickle
import random

import pytest
import torch

from dassl.data import DataManager
from dassl.data.datasets import DATASET_REGISTRY, Datum, DatasetBase
from vlprompt.datasets.splits import subsample_classes
from vlprompt.trainers.config import get_cfg


@pytest.fixture
def items(tmp_path):
    """Eight items whose labels first appear in the order 2, 0, 1 (not sorted)."""
    labels = [2, 0, 2, 1, 0, 2, 0, 2]
    out = []
    for i, label in enumerate(labels):
        path = tmp_path / f"im{i}.jpg"
        path.write_bytes(b"x")
        out.append(Datum(impath=str(path), label=label, classname=f"c{label}"))
    return out


def test_fewshot_sampling_follows_reference_call_order(items):
    ds = DatasetBase(train_x=items)
    random.seed(3)
    got = ds.generate_fewshot_dataset(items, num_shots=2)
    # Hand computation of the reference semantics: groups in order of first appearance
    # (labels 2, 0, 1); random.sample(group, 2) per group, one call each, in that order;
    # label 1 has a single item, which is kept as is (no call to random).
    random.seed(3)
    group2 = [items[i] for i in (0, 2, 5, 7)]
    group0 = [items[i] for i in (1, 4, 6)]
    expected = random.sample(group2, 2) + random.sample(group0, 2) + [items[3]]
    assert got == expected
    assert [d.label for d in got] == [2, 2, 0, 0, 1]


def test_fewshot_repeat_pads_and_negative_is_identity(items):
    ds = DatasetBase(train_x=items)
    random.seed(0)
    got = ds.generate_fewshot_dataset(items, num_shots=3, repeat=True)
    assert [d.label for d in got].count(1) == 3
    assert ds.generate_fewshot_dataset(items, num_shots=-1) is items


def test_subsample_base_new_relabels(items):
    train, = subsample_classes(items, subsample="base")  # labels {0,1,2} → base = [0, 1]
    assert sorted({d.label for d in train}) == [0, 1]
    assert {d.classname for d in train} == {"c0", "c1"}
    new, = subsample_classes(items, subsample="new")
    assert {(d.label, d.classname) for d in new} == {(0, "c2")}
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(items, subsample="novel")


def test_datum_pickles_under_dassl_module_path(items):
    blob = pickle.dumps(items[0])
    assert b"dassl.data.datasets.base_dataset" in blob
    assert pickle.loads(blob) == items[0]


def _synthetic_cfg(data_root, **opts):
    cfg = get_cfg()
    cfg.DATASET.ROOT = data_root
    cfg.DATASET.NAME = "Synthetic"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("random_flip", "normalize")
    for k, v in opts.items():
        node = cfg
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def test_synthetic_dataset_shapes_and_determinism(data_root):
    cfg = _synthetic_cfg(data_root, DATASET__NUM_SHOTS=4, SEED=7)
    random.seed(7)
    a = DATASET_REGISTRY.get("Synthetic")(cfg)
    random.seed(7)
    b = DATASET_REGISTRY.get("Synthetic")(cfg)  # second build reads the few-shot cache
    assert a.classnames[:3] == ["red circle", "green square", "blue triangle"]
    assert len(a.train_x) == 40 and len(a.val) == 40 and len(a.test) == 120  # 10 classes × (4, min(4,4), 12)
    assert [d.impath for d in a.train_x] == [d.impath for d in b.train_x]
    cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    new = DATASET_REGISTRY.get("Synthetic")(cfg)
    assert new.classnames == a.classnames[5:] and new.num_classes == 5


def test_data_manager_batches(data_root):
    cfg = _synthetic_cfg(data_root, DATALOADER__TRAIN_X__BATCH_SIZE=8, DATASET__NUM_SHOTS=2)
    dm = DataManager(cfg)
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape == (8, 3, 32, 32) and batch["label"].dtype == torch.int64
    assert set(batch) >= {"img", "label", "domain", "impath", "index", "true_label"}
    assert len(dm.train_loader_x) == 20 // 8  # drop_last on the train loader
    assert sum(len(b["label"]) for b in dm.test_loader) == 120  # never drops on test


def test_domain_samplers_draw_balanced_batches(items):
    """RandomDomainSampler/SeqDomainSampler: every batch holds batch/n_domain unused items per domain."""
    from dassl.data.samplers import RandomDomainSampler, SeqDomainSampler

    data = [Datum(impath=items[0].impath, label=i % 2, domain=i % 3) for i in range(30)]  # 10 per domain
    random.seed(0)
    seq = list(SeqDomainSampler(data, batch_size=6))
    # 10 items per domain, 2 per domain per batch: 5 batches, after which every domain is empty.
    assert len(seq) == len(set(seq)) == 30
    for start in range(0, len(seq), 6):
        assert sorted(data[i].domain for i in seq[start:start + 6]) == [0, 0, 1, 1, 2, 2]
    rnd = list(RandomDomainSampler(data, batch_size=4, n_domain=2))
    assert len(rnd) == len(set(rnd))
    for start in range(0, len(rnd), 4):
        doms = [data[i].domain for i in rnd[start:start + 4]]
        assert doms[0] == doms[1] and doms[2] == doms[3] and doms[0] != doms[2]
    with pytest.raises(ValueError, match="not divisible"):
        SeqDomainSampler(data, batch_size=5)
