"""The download helper: every dataset has a plan, names resolve, a dry run fetches nothing, and a
``url`` step downloads and extracts an archive (a local file:// URL, no network)."""
from __future__ import annotations

import os
import os.path as osp
import re
import tarfile

import pytest

from dataset_fixtures import ALL_DATASETS
from vlprompt.datasets import download
from vlprompt.trainers.config import get_cfg

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "datasets")


def test_every_dataset_and_config_stem_has_a_plan():
    """Each reader has a plan, reachable by its class name and by its config file's stem."""
    get_cfg()
    assert sorted(download.PLANS) == sorted(ALL_DATASETS)
    stems = {}
    for filename in os.listdir(CONFIG_DIR):
        with open(osp.join(CONFIG_DIR, filename)) as f:
            stems[osp.splitext(filename)[0]] = re.search(r'NAME: "(\w+)"', f.read()).group(1)
    ours = {stem: name for stem, name in stems.items() if name in ALL_DATASETS}
    assert len(ours) == 20
    assert all(download.resolve_name(stem) == name == download.resolve_name(name) for stem, name in ours.items())
    with pytest.raises(KeyError, match="unknown dataset 'oxford_petz'"):
        download.resolve_name("oxford_petz")


def test_dry_run_fetches_nothing(tmp_path, monkeypatch, caplog):
    """Without --download only the plan is logged; no downloader is called."""
    def _fail(*args, **kwargs):
        raise AssertionError("a dry run must not download")

    monkeypatch.setattr(download, "run_step", _fail)
    caplog.set_level("INFO", logger="vlprompt.datasets.download")
    assert download.main(["oxford_pets", "dtd", "--root", str(tmp_path)]) == 0
    assert "split_zhou_OxfordPets.json" in caplog.text and "dtd-r1.0.1.tar.gz" in caplog.text
    assert os.listdir(tmp_path) == []


def test_url_step_downloads_and_extracts(tmp_path):
    """A tar.gz fetched through a url step is unpacked next to its target and then removed."""
    src = tmp_path / "src"
    (src / "dtd" / "images" / "banded").mkdir(parents=True)
    (src / "dtd" / "images" / "banded" / "a.jpg").write_bytes(b"x")
    archive = tmp_path / "dtd.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "dtd", arcname="dtd")
    root = tmp_path / "root"
    download.run_step(download.Step("url", archive.as_uri(), "dtd-r1.0.1.tar.gz", extract=True), str(root))
    assert (root / "dtd" / "images" / "banded" / "a.jpg").read_bytes() == b"x"
    assert not (root / "dtd-r1.0.1.tar.gz").exists()
    download.run_step(download.Step("move", "dtd/images", "dtd/moved"), str(root))
    download.run_step(download.Step("copy", "dtd/moved/banded/a.jpg", "dtd/copy.jpg"), str(root))
    assert (root / "dtd" / "copy.jpg").read_bytes() == b"x" and not (root / "dtd" / "images").exists()
