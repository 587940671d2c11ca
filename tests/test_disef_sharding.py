"""Sharded DISEF generation (trainers/disef/sharding.py): classes split across processes, one manifest.

Checked: shard I of N owns exactly the classes c % N == I (disjoint, complete, order kept); the shard comes from
the flags, torchrun, srun or a Slurm array (and both); two shards run one after the other with the tiny LLaVA and
Stable Diffusion keep the same image bytes, write the same manifest.jsonl bytes and cache the same captions as one
process, and the last shard to finish merges; merging is idempotent and refuses, naming the shard, a missing or
unfinished shard, a class claimed by two shards, and records it would drop; a killed shard resumes without
regenerating kept images and never touches the other shard's files; the command line reads RANK/WORLD_SIZE.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp

import pytest
import torch

from disef_helpers import CLASSNAMES, ConstantFilter, SolidGenerator, files_on_disk, tiny_models, write_real_images
from vlprompt.trainers.disef.cli import main
from vlprompt.trainers.disef.config import GenerationConfig
from vlprompt.trainers.disef.manifest import Manifest, read_manifest
from vlprompt.trainers.disef.models import Img2ImgGenerator, LlavaCaptioner, TemplateCaptioner
from vlprompt.trainers.disef.pipeline import kept_images, run_generation
from vlprompt.trainers.disef.sharding import Shard, ShardMergeError, finish_shard, merge_shard_manifests, \
    resolve_shard, shard_device, shard_from_env


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models are ~10x faster on one thread when the 2 shared cores are busy; parity needs no more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    """The command reads these when --num-shards is absent; a test run inside Slurm must not see its own."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture()
def real(tmp_path):
    return write_real_images(str(tmp_path / "real"))


def _digest(root: str) -> dict[str, str]:
    return {f: hashlib.sha256(open(osp.join(root, f), "rb").read()).hexdigest() for f in files_on_disk(root)}


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _mtimes(root: str) -> dict[str, int]:
    return {f: os.stat(osp.join(root, f)).st_mtime_ns for f in files_on_disk(root)}


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_class_partition_is_disjoint_and_complete(count):
    """Every class goes to exactly one shard, c % N; each shard keeps the run's class order."""
    classes = [12, 0, 3, 4, 7, 9, 10]
    parts = [Shard(i, count).select(classes) for i in range(count)]
    assert sorted(c for part in parts for c in part) == sorted(classes)  # complete, and no class twice
    for index, part in enumerate(parts):
        assert part == [c for c in classes if c % count == index]
    assert Shard(1, 3).select(range(8)) == [1, 4, 7]
    with pytest.raises(ValueError, match="shard index 2 of 2"):
        Shard(2, 2)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}, (3, 4)),  # torchrun
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (1, 2)),  # srun
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (1, 2)),  # torchrun under srun
    ({"RANK": "0", "WORLD_SIZE": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_ARRAY_TASK_ID": "5",
      "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, (4, 8)),  # --array=1-8: count 1 means unset
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4",
      "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (7, 8)),  # 4 array tasks x 2 srun tasks
])
def test_shard_from_environment(env, expected):
    shard = shard_from_env(env)
    assert (shard.index, shard.count) == expected
    assert resolve_shard(None, None, env) == shard
    assert resolve_shard(0, 3, env) == Shard(0, 3)  # the flags win


def test_shard_argument_errors_and_device():
    with pytest.raises(ValueError, match="--shard-index and --num-shards go together"):
        resolve_shard(1, None, {})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=9"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert shard_device("cuda", {"LOCAL_RANK": "3"}, device_count=8) == "cuda:3"
    assert shard_device("cuda", {"SLURM_LOCALID": "9"}, device_count=8) == "cuda:1"
    assert shard_device("cuda", {"LOCAL_RANK": "3"}, device_count=1) == "cuda"  # one visible GPU (srun binding)
    assert shard_device("cuda:2", {"LOCAL_RANK": "3"}, device_count=8) == "cuda:2"
    assert shard_device("cpu", {"LOCAL_RANK": "3"}, device_count=8) == "cpu"


def test_two_shards_equal_one_process(real, tmp_path):
    """Tiny LLaVA + Stable Diffusion, a filter that rejects classes 1 and 2 until the budget: shard 1 then shard 0
    (which merges) give the kept and discarded image bytes, manifest.jsonl bytes and captions of one process."""
    cfg = dict(images_per_class=2, batch_size=2, init_size=32, seed=7, caption_max_new_tokens=6, cycle_budget=1,
               save_discarded=True)
    pipe, model, processor = tiny_models()
    generator = Img2ImgGenerator(pipe, GenerationConfig(**cfg))
    captioner = LlavaCaptioner(model, processor, GenerationConfig(**cfg))
    single, sharded = str(tmp_path / "single"), str(tmp_path / "sharded")
    kept = run_generation(GenerationConfig(**cfg), single, real, CLASSNAMES, captioner, generator, ConstantFilter(0))
    assert kept == {0: 2, 1: 2, 2: 2}

    kept_1 = run_generation(GenerationConfig(**cfg), sharded, real, CLASSNAMES, captioner, generator,
                            ConstantFilter(0), shard=Shard(1, 2))
    assert kept_1 == {1: 2} and not osp.exists(osp.join(sharded, "manifest.jsonl"))  # shard 0 has not run
    kept_0 = run_generation(GenerationConfig(**cfg), sharded, real, CLASSNAMES, captioner, generator,
                            ConstantFilter(0), shard=Shard(0, 2))
    assert kept_0 == {0: 2, 2: 2}

    assert {r["class"] for r in read_manifest(sharded, "manifest.shard-0-of-2.jsonl")} == {0, 2}
    assert {r["class"] for r in read_manifest(sharded, "manifest.shard-1-of-2.jsonl")} == {1}
    reasons = [r["reason"] for r in read_manifest(single)]
    assert reasons.count("filter_fail") == 4 and reasons.count("budget") == 4  # discards and budget both covered
    assert len(_digest(single)) == 2 * 3 + 4  # kept + discarded images
    assert _digest(sharded) == _digest(single)
    assert _bytes(osp.join(sharded, "manifest.jsonl")) == _bytes(osp.join(single, "manifest.jsonl"))
    with open(osp.join(single, "captions.json")) as f, open(osp.join(sharded, "captions.json")) as g:
        assert json.load(f) == json.load(g)
    assert {k: [osp.relpath(p, sharded) for p in v] for k, v in kept_images(sharded).items()} == \
        {k: [osp.relpath(p, single) for p in v] for k, v in kept_images(single).items()}

    before = os.stat(osp.join(sharded, "manifest.jsonl")).st_mtime_ns
    merge_shard_manifests(sharded)  # idempotent: nothing to rewrite
    assert os.stat(osp.join(sharded, "manifest.jsonl")).st_mtime_ns == before


def _fast_run(root: str, real, shard: Shard, generator=None, **cfg) -> dict[int, int]:
    cfg = {"images_per_class": 3, "batch_size": 2, "init_size": 0, "seed": 5, **cfg}
    return run_generation(GenerationConfig(**cfg), root, real, CLASSNAMES, TemplateCaptioner(),
                          generator or SolidGenerator(), None, shard=shard)


def test_merge_refuses_missing_unfinished_and_overlapping_shards(real, tmp_path, caplog):
    root = str(tmp_path / "gen")
    _fast_run(root, real, Shard(0, 2))
    assert not osp.exists(osp.join(root, "manifest.jsonl"))
    with pytest.raises(ShardMergeError, match=r"shard 1-of-2 is missing \(no manifest.shard-1-of-2.jsonl"):
        merge_shard_manifests(root)

    with pytest.raises(KeyboardInterrupt):  # shard 1 killed in its first cycle
        _fast_run(root, real, Shard(1, 2), SolidGenerator(fail_after=0))
    with pytest.raises(ShardMergeError, match="shard 1-of-2 is incomplete"):
        merge_shard_manifests(root, 2)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["--merge", "--output-dir", root]) == 1  # the command: one error line, exit status 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "shard 1-of-2 is incomplete" in errors[0] and "\n" not in errors[0]

    _fast_run(root, real, Shard(1, 2))  # finishes last: merges
    merged = _bytes(osp.join(root, "manifest.jsonl"))
    assert [r["class"] for r in read_manifest(root)] == [0] * 3 + [1] * 3 + [2] * 3  # class order
    assert main(["--merge", "--output-dir", root]) == 0 and _bytes(osp.join(root, "manifest.jsonl")) == merged

    extra = read_manifest(root, "manifest.shard-0-of-2.jsonl")[0]  # shard 1 now also claims class 0
    with open(osp.join(root, "manifest.shard-1-of-2.jsonl"), "a") as f:
        f.write(json.dumps(extra) + "\n")
    assert finish_shard(root, Shard(1, 2), [1]) is False  # the automatic merge refuses (and logs why)
    with pytest.raises(ShardMergeError, match="class 0 is claimed by shard 0-of-2 and shard 1-of-2"):
        merge_shard_manifests(root)
    with pytest.raises(ShardMergeError, match="--num-shards 1: an unsharded run writes manifest.jsonl itself"):
        merge_shard_manifests(root, 1)
    assert _bytes(osp.join(root, "manifest.jsonl")) == merged  # a refused merge writes nothing


def test_merge_never_drops_records_and_plain_run_merges(real, tmp_path):
    """A record only manifest.jsonl has stops the merge; a plain run merges finished shards instead of deleting
    their images as orphans, and a shard adopts manifest.jsonl's records of its classes."""
    root, reference = str(tmp_path / "gen"), str(tmp_path / "plain")
    _fast_run(reference, real, Shard())
    for index in (0, 1):
        _fast_run(root, real, Shard(index, 2))
    assert _bytes(osp.join(root, "manifest.jsonl")) == _bytes(osp.join(reference, "manifest.jsonl"))

    os.remove(osp.join(root, "manifest.jsonl"))
    generator = SolidGenerator()
    assert _fast_run(root, real, Shard(), generator) == {0: 3, 1: 3, 2: 3} and generator.images == 0
    assert _digest(root) == _digest(reference)  # nothing regenerated or deleted
    assert _fast_run(root, real, Shard(), generator, images_per_class=4) == {0: 4, 1: 4, 2: 4}  # plain run extends
    assert generator.images == 3 * 2

    generator = SolidGenerator()  # a 3-shard run continues the plain one: shard 2 adopts class 2's 4 records
    assert _fast_run(root, real, Shard(2, 3), generator, images_per_class=5) == {2: 5} and generator.images == 2
    assert len(read_manifest(root, "manifest.shard-2-of-3.jsonl")) == 5
    for index in (0, 1):  # shard 1 finishes last and merges
        _fast_run(root, real, Shard(index, 3), images_per_class=5)
    assert [r["class"] for r in read_manifest(root)] == [0] * 5 + [1] * 5 + [2] * 5
    _fast_run(root, real, Shard(), images_per_class=6)  # a plain run extends the merged manifest
    with pytest.raises(ShardMergeError, match="manifest.jsonl has 3 records no shard manifest holds"):
        merge_shard_manifests(root, 3)  # it would drop the plain run's records
    assert len(read_manifest(root)) == 3 * 6


def test_killed_shard_resumes_without_regenerating(real, tmp_path, monkeypatch):
    """Shard 0 killed between class 2's images and their records: the re-run generates only class 2, never
    rewrites kept images, never touches shard 1's files, and ends with the files and manifest of an uninterrupted
    sharded run."""
    reference, root = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    for index in (1, 0):
        _fast_run(reference, real, Shard(index, 2))
    _fast_run(root, real, Shard(1, 2))
    shard_1_files = _mtimes(root)

    original_append = Manifest.append
    appended = []

    def append_then_die(self, records):
        if records[0]["class"] == 2:  # class 2, first cycle: images on disk, records not
            raise KeyboardInterrupt("simulated kill")
        appended.append(records)
        original_append(self, records)

    monkeypatch.setattr(Manifest, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fast_run(root, real, Shard(0, 2))
    monkeypatch.setattr(Manifest, "append", original_append)
    assert len(appended) == 2  # class 0's two cycles
    survivors = _mtimes(root)
    assert len(survivors) == len(shard_1_files) + 3 + 2  # + class 0's kept + class 2's orphans
    assert not osp.exists(osp.join(root, "manifest.jsonl")) and not osp.exists(
        osp.join(root, "manifest.shard-0-of-2.done.json"))

    generator = SolidGenerator()
    assert _fast_run(root, real, Shard(0, 2), generator) == {0: 3, 2: 3}
    assert generator.images == 2 * 2  # class 2's two cycles only
    after = _mtimes(root)
    for name, mtime in survivors.items():
        if not name.startswith("blue_triangle"):
            assert after[name] == mtime, name  # class 0's kept images and all of shard 1's are untouched
    assert _digest(root) == _digest(reference)
    assert _bytes(osp.join(root, "manifest.jsonl")) == _bytes(osp.join(reference, "manifest.jsonl"))


def test_command_line_shards_from_torchrun_env(tmp_path, monkeypatch):
    """``generate.py`` as two torchrun ranks (RANK/WORLD_SIZE): each writes its shard, rank 0 (last) merges into
    the manifest a plain run writes; the merge by hand is then a no-op."""
    data, sharded, single = str(tmp_path / "data"), str(tmp_path / "sharded"), str(tmp_path / "single")
    argv = ["--root", data, "--dataset-config-file", "configs/datasets/synthetic.yaml", "--num-shots", "2",
            "--subsample-classes", "all", "--images-per-class", "1", "--batch-size", "1", "--steps", "2",
            "--strength", "1.0", "--init-size", "32", "--caption-max-new-tokens", "4", "--filter-backbone", "none",
            "--tiny-models", "--device", "cpu", "DATASET.SYNTHETIC.NUM_CLASSES", "3", "DATASET.SYNTHETIC.NUM_TRAIN",
            "2", "DATASET.SYNTHETIC.NUM_VAL", "1", "DATASET.SYNTHETIC.NUM_TEST", "1", "DATASET.SYNTHETIC.IMAGE_SIZE",
            "32"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(["--output-dir", sharded] + argv) == 0
    assert [r["class"] for r in read_manifest(sharded, "manifest.shard-1-of-2.jsonl")] == [1]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["--output-dir", single] + argv) == 0
    assert _bytes(osp.join(sharded, "manifest.jsonl")) == _bytes(osp.join(single, "manifest.jsonl"))
    assert [r["class"] for r in read_manifest(sharded)] == [0, 1, 2]
    assert _digest(sharded) == _digest(single)
    assert main(["--merge", "--output-dir", sharded]) == 0
