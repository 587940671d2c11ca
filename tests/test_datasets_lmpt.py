"""COCO-LT / VOC-LT: the list files shipped in ``datasets/lists/lmpt`` parse to the published counts, class
frequencies and head/medium/tail groups; our computed ``class_freq`` / groups equal DBL's ``class_freq.pkl`` /
``class_split.pkl`` (reference copies in ../shared/data/lmpt, read with the restricted unpickler; only that
comparison is skipped when they are absent); and the readers build multi-label Datums with captions from lists
in the real format, by default from the shipped copies.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp

import numpy as np
import pytest

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import set_random_seed
from dassl.utils.safe_pickle import load_pickle
from dataset_fixtures import write_image
from vlprompt.datasets.coco_lt import COCO_CLASSNAMES
from vlprompt.datasets.lt_multilabel import (
    SHIPPED_LMPT_DIR,
    class_frequencies,
    head_medium_tail,
    read_captions,
    read_multilabel_list,
)
from vlprompt.datasets.splits import DatasetNotFoundError
from vlprompt.datasets.voc_lt import VOC_CLASSNAMES
from vlprompt.trainers.config import get_cfg

COCO_FREQ = [1128, 37, 276, 32, 9, 41, 18, 87, 20, 50, 11, 13, 8, 97, 19, 49, 70, 17, 7, 10, 8, 6, 7, 7, 100, 39,
             189, 31, 24, 11, 12, 8, 35, 10, 25, 21, 17, 10, 20, 460, 84, 498, 126, 207, 173, 366, 39, 35, 44, 36,
             29, 25, 14, 45, 16, 73, 585, 153, 164, 44, 624, 25, 200, 137, 70, 89, 73, 127, 91, 175, 9, 237, 119,
             292, 87, 113, 15, 21, 6, 11]
VOC_FREQ = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
COCO_HEAD = [0, 2, 24, 26, 39, 41, 42, 43, 44, 45, 56, 57, 58, 60, 62, 63, 67, 69, 71, 72, 73, 75]
COCO_TAIL = [4, 6, 10, 11, 12, 14, 17, 18, 19, 20, 21, 22, 23, 29, 30, 31, 33, 36, 37, 52, 54, 70, 76, 78, 79]
VOC_HEAD, VOC_MEDIUM, VOC_TAIL = [4, 6, 8, 10, 14, 15], [1, 7, 11, 13, 17, 19], [0, 2, 3, 5, 9, 12, 16, 18]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# DBL's pickles (non-commercial licence: never shipped) as reference data for the engineers' checkout only.
DBL_REFERENCE_DIR = osp.join(REPO_ROOT, "..", "shared", "data", "lmpt")

SPEC = {  # name: (subdir, prefix, classnames, n_train, n_test, freq, group sizes)
    "COCOLT": ("coco", "coco", COCO_CLASSNAMES, 1909, 5000, COCO_FREQ, (22, 33, 25)),
    "VOCLT": ("voc", "voc", VOC_CLASSNAMES, 1142, 4952, VOC_FREQ, (6, 6, 8)),
}


def build(root, name: str, lmpt_dir: str = "", shots: int = -1):
    cfg = get_cfg()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.LMPT_DATA_DIR = lmpt_dir
    cfg.DATASET.NUM_SHOTS = shots
    set_random_seed(1)
    return DATASET_REGISTRY.get(name)(cfg)


def test_shipped_lists_carry_notice_licence_and_checksums():
    """Every shipped list file is listed in SHA256SUMS with its current hash; NOTICE names origin and licence."""
    with open(osp.join(SHIPPED_LMPT_DIR, "SHA256SUMS")) as f:
        sums = dict(reversed(line.split()) for line in f if line.strip())
    shipped = sorted(f"{d}/{n}" for d in ("coco", "voc") for n in os.listdir(osp.join(SHIPPED_LMPT_DIR, d)))
    assert sorted(sums) == shipped and len(shipped) == 8
    for relpath, digest in sums.items():
        with open(osp.join(SHIPPED_LMPT_DIR, relpath), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, relpath
    notice = open(osp.join(SHIPPED_LMPT_DIR, "NOTICE")).read()
    assert "richard-peng-xia/LMPT" in notice and "aab39ca" in notice and "Apache License, Version 2.0" in notice
    assert "Apache License" in open(osp.join(SHIPPED_LMPT_DIR, "LICENSE")).read()


def _computed_statistics(name: str):
    subdir, prefix, classnames, *_ = SPEC[name]
    train = read_multilabel_list(osp.join(SHIPPED_LMPT_DIR, subdir, f"{prefix}_lt_train.txt"), len(classnames))
    class_freq = class_frequencies([labels for _, labels in train], len(classnames))
    return class_freq, head_medium_tail(class_freq)


@pytest.mark.parametrize("name", list(SPEC))
def test_statistics_equal_dbl_reference_pickles(name):
    """Our class_freq, neg_class_freq and head/medium/tail equal DBL's class_freq.pkl and class_split.pkl."""
    folder = osp.join(DBL_REFERENCE_DIR, SPEC[name][0])
    if not osp.isfile(osp.join(folder, "class_freq.pkl")):
        pytest.skip(f"DBL reference pickles not found in {folder} (engineers' checkout only)")
    class_freq, groups = _computed_statistics(name)
    dbl_freq = load_pickle(osp.join(folder, "class_freq.pkl"))
    assert isinstance(dbl_freq["class_freq"], np.ndarray)
    assert dbl_freq["class_freq"].tolist() == class_freq.tolist()
    assert dbl_freq["neg_class_freq"].tolist() == (SPEC[name][3] - class_freq).tolist()
    dbl_split = load_pickle(osp.join(folder, "class_split.pkl"))
    ours = (set(groups["head"]), set(groups["medium"]), set(groups["tail"]))
    assert ours == ({int(c) for c in dbl_split["head"]}, {int(c) for c in dbl_split["middle"]},
                    {int(c) for c in dbl_split["tail"]})


@pytest.mark.parametrize("name", list(SPEC))
def test_shipped_lists_match_spec(name):
    """Sizes, per-class train counts and head/medium/tail sizes of the shipped lists."""
    subdir, prefix, classnames, n_train, n_test, freq, sizes = SPEC[name]
    folder = osp.join(SHIPPED_LMPT_DIR, subdir)
    train = read_multilabel_list(osp.join(folder, f"{prefix}_lt_train.txt"), len(classnames))
    test = read_multilabel_list(osp.join(folder, f"{prefix}_lt_test.txt"), len(classnames))
    assert (len(train), len(test)) == (n_train, n_test)
    class_freq, groups = _computed_statistics(name)
    assert class_freq.tolist() == freq
    assert tuple(len(groups[k]) for k in ("head", "medium", "tail")) == sizes
    captions = read_captions(osp.join(folder, f"{prefix}_lt_captions.txt"))
    assert set(captions) == {path for path, _ in train}
    with open(osp.join(folder, f"{prefix}_labels.txt")) as f:  # "name id" lines give the same order
        assert [line.split()[:-1] for line in f if line.strip()] == [c.split() for c in classnames]


def test_group_members_and_unlabelled_coco_test_images():
    """The spec's head/tail index lists, and COCO-LT's 48 test images without labels."""
    assert head_medium_tail(COCO_FREQ)["head"] == COCO_HEAD and head_medium_tail(COCO_FREQ)["tail"] == COCO_TAIL
    assert [head_medium_tail(VOC_FREQ)[k] for k in ("head", "medium", "tail")] == [VOC_HEAD, VOC_MEDIUM, VOC_TAIL]
    test = read_multilabel_list(osp.join(SHIPPED_LMPT_DIR, "coco", "coco_lt_test.txt"), 80)
    assert sum(1 for _, labels in test if not labels) == 48


@pytest.mark.parametrize("name", list(SPEC))
def test_full_build_on_shipped_lists(tmp_path, name):
    """The default list location ("") is the shipped copy; images resolve under DATASET.ROOT/<dir>."""
    subdir, prefix, classnames, n_train, n_test, freq, sizes = SPEC[name]
    folder = osp.join(SHIPPED_LMPT_DIR, subdir)
    src = write_image(str(tmp_path / "one.jpg"))
    for split in ("train", "test"):
        for path, _ in read_multilabel_list(osp.join(folder, f"{prefix}_lt_{split}.txt"), len(classnames)):
            dst = tmp_path / subdir / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    ds = build(tmp_path, name)
    assert ds.classnames == list(classnames) and ds.num_classes == len(classnames)
    assert (len(ds.train_x), len(ds.test)) == (n_train, n_test) and ds.val is ds.test
    assert ds.cls_num_list == freq and ds.class_freq.tolist() == freq
    assert ds.neg_class_freq.tolist() == [n_train - n for n in freq]
    assert tuple(len(ds.groups[k]) for k in ("head", "medium", "tail")) == sizes
    assert all(d.is_multilabel and d.caption for d in ds.train_x)
    assert all(d.caption is None for d in ds.test)
    first = ds.train_x[0]
    if name == "VOCLT":  # "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg 14 4 19"
        assert first.label == (4, 14, 19)
        assert first.caption == "a bottle of beer and a candle on a table with pizza and a television."
        assert first.impath == str(tmp_path / "voc" / "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg")
    else:  # "train2017/000000554625.jpg 0 62 64 66 "
        assert first.label == (0, 62, 64, 66)
        assert first.caption.startswith("a boy wearing headphones using one computer in a long row")


def _write_mini_voc(root, lists):
    """Three train images (unsorted indices, captions in another order) and three test images."""
    for rel in ("VOCdevkit/VOC2012/JPEGImages/a.jpg", "VOCdevkit/VOC2012/JPEGImages/b.jpg",
                "VOCdevkit/VOC2012/JPEGImages/c.jpg", "VOCdevkit/VOC2007/JPEGImages/t1.jpg",
                "VOCdevkit/VOC2007/JPEGImages/t2.jpg", "VOCdevkit/VOC2007/JPEGImages/t3.jpg"):
        write_image(str(root / "voc" / rel))
    (lists / "voc").mkdir(parents=True)
    (lists / "voc" / "voc_lt_train.txt").write_text(
        "VOCdevkit/VOC2012/JPEGImages/a.jpg 14 4 19\nVOCdevkit/VOC2012/JPEGImages/b.jpg 6\n"
        "VOCdevkit/VOC2012/JPEGImages/c.jpg 4 \n")
    (lists / "voc" / "voc_lt_test.txt").write_text(
        "VOCdevkit/VOC2007/JPEGImages/t1.jpg 0 1\nVOCdevkit/VOC2007/JPEGImages/t2.jpg\n"
        "VOCdevkit/VOC2007/JPEGImages/t3.jpg 19\n")
    (lists / "voc" / "voc_lt_captions.txt").write_text(
        "VOCdevkit/VOC2012/JPEGImages/c.jpg a  bottle.\nVOCdevkit/VOC2012/JPEGImages/a.jpg two people\n"
        "VOCdevkit/VOC2012/JPEGImages/b.jpg a car")


def test_miniature_lists_in_real_format(tmp_path):
    """Labels are sorted tuples, an empty test line is kept with no labels, captions match by path."""
    lists = tmp_path / "lists"
    _write_mini_voc(tmp_path, lists)
    ds = build(tmp_path, "VOCLT", lmpt_dir=str(lists))
    assert [d.label for d in ds.train_x] == [(4, 14, 19), (6,), (4,)]
    assert [d.caption for d in ds.train_x] == ["two people", "a car", "a bottle."]
    assert [d.label for d in ds.test] == [(0, 1), (), (19,)]
    assert ds.cls_num_list[4] == 2 and ds.cls_num_list[14] == 1 and sum(ds.cls_num_list) == 5
    assert ds.groups["tail"] == list(range(20))


def test_list_errors(tmp_path):
    """Out-of-range indices name file and line; a missing caption or list file is named."""
    lists = tmp_path / "lists"
    _write_mini_voc(tmp_path, lists)
    bad = lists / "voc" / "voc_lt_test.txt"
    bad.write_text("VOCdevkit/VOC2007/JPEGImages/t1.jpg 0 20\n")
    with pytest.raises(ValueError, match=r"voc_lt_test\.txt:1: class index outside 0\.\.19"):
        build(tmp_path, "VOCLT", lmpt_dir=str(lists))
    bad.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"voc_lt_test\.txt .*DATASETS\.md#voclt"):
        build(tmp_path, "VOCLT", lmpt_dir=str(lists))
    _write_mini_voc(tmp_path / "again", tmp_path / "again" / "lists")
    (tmp_path / "again" / "lists" / "voc" / "voc_lt_captions.txt").write_text("VOCdevkit/VOC2012/JPEGImages/a.jpg x\n")
    with pytest.raises(ValueError, match="2 training images have no caption"):
        build(tmp_path / "again", "VOCLT", lmpt_dir=str(tmp_path / "again" / "lists"))
    with pytest.raises(ValueError, match="DATASET.NUM_SHOTS"):
        build(tmp_path / "again", "VOCLT", lmpt_dir=str(tmp_path / "again" / "lists"), shots=4)
