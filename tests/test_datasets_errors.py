"""A missing dataset folder, a missing split/list file, a missing or an unreadable image each fail
with one line that names the path and points at DATASETS.md."""
from __future__ import annotations

import os
import os.path as osp
import re

import pytest

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import UnreadableImageError, read_image, set_random_seed
from dataset_fixtures import ALL_DATASETS, make_eurosat, make_fgvc_aircraft, make_oxford_pets
from vlprompt.datasets.splits import DatasetNotFoundError
from vlprompt.trainers.config import get_cfg



def _real_datasets():
    get_cfg()  # imports every dataset module
    return list(ALL_DATASETS)


def build(root, name: str):
    cfg = get_cfg()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    set_random_seed(1)
    return DATASET_REGISTRY.get(name)(cfg)


def _expected_missing_path(root: str, name: str) -> str:
    cls = DATASET_REGISTRY.get(name)
    if name in ("CIFAR10LT", "CIFAR100LT"):
        return osp.join(root, cls.dataset_dir, cls.base_folder)
    return osp.join(root, cls.dataset_dir)


def test_every_dataset_is_registered_with_a_config():
    """All 20 readers are registered, each with a configs/datasets/*.yaml naming it."""
    names = set(_real_datasets())
    assert len(names) == 20 and names <= set(DATASET_REGISTRY.registered_names())
    config_dir = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "datasets")
    named = set()
    for filename in os.listdir(config_dir):
        with open(osp.join(config_dir, filename)) as f:
            named |= set(re.findall(r'NAME: "(\w+)"', f.read()))
    assert names <= named


@pytest.mark.parametrize("name", _real_datasets())
def test_missing_dataset_folder(tmp_path, name):
    """An empty DATASET.ROOT: the error names the dataset folder and the DATASETS.md section."""
    expected = _expected_missing_path(str(tmp_path), name)
    with pytest.raises(DatasetNotFoundError) as err:
        build(tmp_path, name)
    message = str(err.value)
    assert expected in message and f"DATASETS.md#{name.lower()}" in message and "\n" not in message


def test_missing_annotations_without_split_json(tmp_path):
    """No split JSON and no annotation list: the error names the list the split is built from."""
    mini = make_oxford_pets(str(tmp_path))
    os.remove(osp.join(mini.dataset_dir, "annotations", "trainval.txt"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(osp.join(mini.dataset_dir, "annotations", "trainval.txt"))
                       + r".*DATASETS\.md#oxfordpets"):
        build(tmp_path, "OxfordPets")


def test_missing_official_split_file(tmp_path):
    """FGVCAircraft reads the official lists every time; a missing one is named."""
    mini = make_fgvc_aircraft(str(tmp_path))
    os.remove(osp.join(mini.dataset_dir, "images_variant_test.txt"))
    with pytest.raises(DatasetNotFoundError, match=r"images_variant_test\.txt .*DATASETS\.md#fgvcaircraft"):
        build(tmp_path, "FGVCAircraft")


def test_image_listed_in_split_but_missing(tmp_path):
    """An image named by the split JSON but absent on disk is named, with DATASETS.md."""
    make_eurosat(str(tmp_path))
    ds = build(tmp_path, "EuroSAT")  # writes the split JSON
    os.remove(ds.test[0].impath)
    with pytest.raises(FileNotFoundError, match=re.escape(ds.test[0].impath) + r".*DATASETS\.md"):
        build(tmp_path, "EuroSAT")


def test_unreadable_image_names_the_file(tmp_path):
    """A corrupt image fails on read with the file's path and a pointer to DATASETS.md."""
    make_eurosat(str(tmp_path))
    ds = build(tmp_path, "EuroSAT")
    path = ds.train_x[0].impath
    with open(path, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match=re.escape(path) + r".*DATASETS\.md"):
        read_image(path)
