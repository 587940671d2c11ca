"""Multi-label evaluation and data: ``MultiLabelClassification`` against scikit-learn and the spec's formulas,
group mAPs over exactly the COCO-LT / VOC-LT groups of ``shared/specs/lmpt.md`` §1.5, the ``* mAP:`` lines
read back by ``parse_test_res.py``, and the ``SyntheticMultiLabel`` dataset batched as multi-hot vectors.
"""
from __future__ import annotations

import logging
import os.path as osp

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from vlprompt import parse_test_res
from dassl.data import DataManager
from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.samplers import ContiguousShardSampler
from dassl.evaluation import build_evaluator
from dassl.evaluation.multilabel import average_precision, threshold_metrics
from vlprompt.datasets.synthetic_multilabel import caption_for
from lmpt_helpers import link_lmpt_images
from vlprompt.trainers.config import get_cfg

# shared/specs/lmpt.md §1.5, typed from the spec (not computed by the code under test)
SPEC_GROUPS = {
    "COCOLT": {
        "head": [0, 2, 24, 26, 39, 41, 42, 43, 44, 45, 56, 57, 58, 60, 62, 63, 67, 69, 71, 72, 73, 75],
        "medium": [1, 3, 5, 7, 8, 9, 13, 15, 16, 25, 27, 28, 32, 34, 35, 38, 40, 46, 47, 48, 49, 50, 51, 53, 55,
                   59, 61, 64, 65, 66, 68, 74, 77],
        "tail": [4, 6, 10, 11, 12, 14, 17, 18, 19, 20, 21, 22, 23, 29, 30, 31, 33, 36, 37, 52, 54, 70, 76, 78, 79],
    },
    "VOCLT": {"head": [4, 6, 8, 10, 14, 15], "medium": [1, 7, 11, 13, 17, 19], "tail": [0, 2, 3, 5, 9, 12, 16, 18]},
}


def _cfg(score: str = "sigmoid", threshold: float = -1.0):
    cfg = get_cfg()
    cfg.TEST.EVALUATOR = "MultiLabelClassification"
    cfg.TEST.MULTILABEL.SCORE = score
    cfg.TEST.MULTILABEL.THRESHOLD = threshold
    return cfg


def _random_batch(n: int, c: int, seed: int, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    if ties:  # few distinct values: exercises scikit-learn's grouping of tied scores
        logits = (logits * 2).round() / 2
    labels = (torch.rand(n, c, generator=g) < 0.3).float()
    return logits, labels


def _sklearn_aps(scores: np.ndarray, labels: np.ndarray) -> dict:
    """{class: AP} for the classes with at least one positive."""
    return {c: average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])
            if labels[:, c].sum() > 0}


def _evaluate(cfg, logits, labels, dataset=None, batch: int = 37):
    evaluator = build_evaluator(cfg, lab2cname=None, dataset=dataset)
    for start in range(0, len(logits), batch):  # uneven batches, as the test loader gives them
        evaluator.process(logits[start:start + batch], labels[start:start + batch])
    return evaluator.evaluate()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_equals_sklearn(seed, ties):
    """Per-class AP = average_precision_score; a class without positives is NaN (left out of the mean)."""
    logits, labels = _random_batch(203, 9, seed, ties)
    labels[:, 4] = 0  # no positive for class 4
    scores = torch.sigmoid(logits.double())
    ap = average_precision(scores, labels)
    expected = _sklearn_aps(scores.numpy(), labels.numpy())
    assert torch.isnan(ap[4]) and 4 not in expected
    got = {c: float(ap[c]) for c in expected}
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("score", ["sigmoid", "softmax", "logit"])
def test_evaluator_map_is_sklearn_macro_over_classes_with_positives(score):
    logits, labels = _random_batch(250, 12, seed=3, ties=True)
    labels[:, 7] = 0
    res = _evaluate(_cfg(score), logits, labels)
    transforms = {"sigmoid": lambda z: torch.sigmoid(z.double()), "softmax": lambda z: torch.softmax(z.double(), 1),
                  "logit": lambda z: z.double()}
    expected = np.mean(list(_sklearn_aps(transforms[score](logits).numpy(), labels.numpy()).values()))
    assert res["mAP"] == pytest.approx(100 * expected, abs=1e-9)
    assert list(res)[0] == "mAP"  # SimpleTrainer.test returns the first value for model selection
    alt = "softmax" if score != "softmax" else "sigmoid"
    expected_alt = np.mean(list(_sklearn_aps(transforms[alt](logits).numpy(), labels.numpy()).values()))
    assert res[f"mAP_{alt}"] == pytest.approx(100 * expected_alt, abs=1e-9)
    if score != "softmax":  # a softmax over classes changes the per-class ranking, sigmoid does not
        assert res["mAP"] != pytest.approx(res["mAP_softmax"], abs=1e-3)


@pytest.mark.parametrize("name", ["COCOLT", "VOCLT"])
def test_group_maps_use_the_spec_groups(tmp_path, name):
    """mAP_head / mAP_medium / mAP_tail = mean scikit-learn AP over the spec's index lists (§1.5)."""
    link_lmpt_images(tmp_path, name)
    cfg = _cfg()
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(tmp_path), name
    dataset = DATASET_REGISTRY.get(name)(cfg)
    n_cls = dataset.num_classes
    logits, labels = _random_batch(300, n_cls, seed=5)
    labels[torch.arange(n_cls), torch.arange(n_cls)] = 1  # every class has a positive
    res = _evaluate(cfg, logits, labels, dataset=dataset)
    aps = _sklearn_aps(torch.sigmoid(logits.double()).numpy(), labels.numpy())
    for group, classes in SPEC_GROUPS[name].items():
        assert res[f"mAP_{group}"] == pytest.approx(100 * np.mean([aps[c] for c in classes]), abs=1e-9), group
    assert res["mAP"] == pytest.approx(100 * np.mean(list(aps.values())), abs=1e-9)


def test_threshold_metrics_formula():
    """CP/CR/CF1 (class means, 0 without a true positive) and OP/OR/OF1 on a hand-made case (spec §4.3)."""
    scores = torch.tensor([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.1, 0.9, 0.4], [0.6, 0.1, 0.2]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    # threshold 0.5 -> predictions [[1,0,1],[1,1,0],[0,1,0],[1,0,0]]
    # class 0: tp 2 fp 1 fn 0; class 1: tp 1 fp 1 fn 1; class 2: tp 0 fp 1 fn 1
    p, r = [2 / 3, 1 / 2, 0.0], [1.0, 1 / 2, 0.0]
    f1 = [2 * p[0] * r[0] / (p[0] + r[0]), 0.5, 0.0]
    op, orr = 3 / 6, 3 / 5
    got = threshold_metrics(scores, labels, 0.5)
    assert got["CP"] == pytest.approx(np.mean(p)) and got["CR"] == pytest.approx(np.mean(r))
    assert got["CF1"] == pytest.approx(np.mean(f1))  # mean per-class F1, not the harmonic mean of CP and CR
    assert got["CF1"] != pytest.approx(2 * np.mean(p) * np.mean(r) / (np.mean(p) + np.mean(r)))
    assert (got["OP"], got["OR"]) == pytest.approx((op, orr))
    assert got["OF1"] == pytest.approx(2 * op * orr / (op + orr))


def test_default_thresholds_per_score():
    """Threshold < 0 means 0.5 for sigmoid and LMPT's 0.3 for softmax scores."""
    logits, labels = _random_batch(60, 5, seed=2)
    res = _evaluate(_cfg("softmax"), logits, labels)
    expected = threshold_metrics(torch.softmax(logits.double(), 1), labels, 0.3)
    assert res["OP"] == pytest.approx(100 * expected["OP"]) and res["CF1"] == pytest.approx(100 * expected["CF1"])
    res = _evaluate(_cfg("sigmoid"), logits, labels)
    assert res["OR"] == pytest.approx(100 * threshold_metrics(torch.sigmoid(logits.double()), labels, 0.5)["OR"])


def test_top_k_predictions_as_lmpt_zero_shot_script():
    """TOP_K 5: each image predicts its 5 best classes; OP / OR / OF1 are then the zero-shot script's
    precision / recall / F1 over all image-class pairs, recomputed here with a loop."""
    logits, labels = _random_batch(40, 9, seed=6)
    cfg = _cfg("softmax")
    cfg.TEST.MULTILABEL.TOP_K = 5
    res = _evaluate(cfg, logits, labels)
    scores = torch.softmax(logits.double(), 1).numpy()
    tp = fp = fn = 0
    for row, truth in zip(scores, labels.numpy()):
        top = set(np.argsort(-row)[:5].tolist())
        for c in range(9):
            tp += (c in top) and truth[c] == 1
            fp += (c in top) and truth[c] == 0
            fn += (c not in top) and truth[c] == 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert (res["OP"], res["OR"]) == pytest.approx((100 * precision, 100 * recall))
    assert res["OF1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert res["OP"] != pytest.approx(_evaluate(_cfg("softmax"), logits, labels)["OP"])  # not the 0.3 threshold
    cfg.TEST.MULTILABEL.TOP_K = -1
    with pytest.raises(ValueError, match="TEST.MULTILABEL.TOP_K=-1"):
        build_evaluator(cfg, lab2cname=None, dataset=None)


def test_rank_blocks_gathered_in_order_give_the_single_process_result():
    """Under torchrun each rank scores a contiguous block of the split (``ContiguousShardSampler``) in test
    batches, and the engine feeds the gathered outputs to the evaluator in rank order: every value, group mAPs
    included, is exactly the single-process one (an odd split size leaves the ranks uneven)."""
    logits, labels = _random_batch(151, 6, seed=7, ties=True)
    dataset = type("D", (), {"groups": {"head": [0, 1], "medium": [2, 3], "tail": [4, 5]}})()
    single = _evaluate(_cfg(), logits, labels, dataset=dataset, batch=32)
    evaluator = build_evaluator(_cfg(), lab2cname=None, dataset=dataset)
    world_size = 2
    for rank in range(world_size):
        block = list(ContiguousShardSampler(len(logits), rank, world_size))
        for start in range(0, len(block), 32):
            rows = block[start:start + 32]
            evaluator.process(logits[rows], labels[rows])
    assert evaluator.evaluate() == single
    assert {"mAP_head", "mAP_medium", "mAP_tail"} <= set(single)


def test_result_block_is_read_by_parse_test_res(tmp_path, caplog):
    """Every value is logged as ``* name: X%``; parse_test_res --keyword mAP / mAP_tail reads them back."""
    logits, labels = _random_batch(120, 6, seed=4)
    dataset = type("D", (), {"groups": {"head": [0, 1], "medium": [2, 3], "tail": [4, 5]}})()
    with caplog.at_level(logging.INFO, logger="dassl.evaluation.multilabel"):
        res = _evaluate(_cfg(), logits, labels, dataset=dataset)
    log = tmp_path / "log.txt"
    log.write_text("Finish training\n" + "\n".join(r.getMessage() for r in caplog.records) + "\n")
    block = caplog.records[-1].getMessage().splitlines()
    assert block[0] == "=> result"
    assert [line.split(":")[0] for line in block[4:]] == [f"* {k}" for k in res]
    for key in ("mAP", "mAP_head", "mAP_tail", "CF1"):
        assert parse_test_res.parse_log(str(log), key, parse_test_res.END_MARKERS_TRAIN) == round(res[key], 2)


def test_bad_score_and_single_label_input_fail():
    with pytest.raises(ValueError, match="TEST.MULTILABEL.SCORE='prob'"):
        build_evaluator(_cfg("prob"), lab2cname=None, dataset=None)
    evaluator = build_evaluator(_cfg(), lab2cname=None, dataset=None)
    with pytest.raises(ValueError, match="multi-hot labels"):
        evaluator.process(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


def _synthetic_cfg(data_root: str):
    cfg = _cfg()
    cfg.merge_from_file(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                                 "configs/datasets/synthetic_multilabel.yaml"))
    cfg.DATASET.ROOT = data_root
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def test_synthetic_multilabel_dataset_and_multi_hot_batches(data_root):
    """Shapes co-occur, counts are long-tailed, captions name the labels, groups are count-ranked thirds;
    the loader batches the tuple labels as multi-hot float vectors of the right rows."""
    cfg = _synthetic_cfg(data_root)
    dm = DataManager(cfg)
    ds = dm.dataset
    assert ds.classnames[:3] == ["red circle", "green square", "blue triangle"] and ds.num_classes == 6
    assert all(d.is_multilabel and 1 <= len(d.label) <= 3 for d in ds.train_x + ds.val + ds.test)
    assert sum(len(d.label) > 1 for d in ds.train_x) > len(ds.train_x) // 4  # real co-occurrence
    assert ds.train_x[5].caption == caption_for(ds.train_x[5].label, ds.classnames)
    assert caption_for((0, 5), ds.classnames) == "a photo of a red circle and an orange diamond"
    counts = [sum(c in d.label for d in ds.train_x) for c in range(6)]
    assert ds.cls_num_list == counts and ds.class_freq.tolist() == counts
    assert ds.neg_class_freq.tolist() == [len(ds.train_x) - n for n in counts]
    assert counts[0] > 4 * counts[-1]  # long-tailed (presence ratio 10)
    ranked = sorted(range(6), key=lambda c: (-counts[c], c))
    assert ds.groups == {"head": sorted(ranked[:2]), "medium": sorted(ranked[2:4]), "tail": sorted(ranked[4:])}
    batch = next(iter(dm.train_loader_x))
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (32, 6)
    for row, index in zip(batch["label"], batch["index"].tolist()):
        assert torch.nonzero(row).flatten().tolist() == list(ds.train_x[index].label)
