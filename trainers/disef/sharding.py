"""Sharded generation: shard ``I`` of ``N`` generates exactly the classes ``c`` with ``c % N == I``.

A class is never split, so its images, records and budget are those of a single-process run.  Shards write into
one output folder, each with its own ``manifest.shard-I-of-N.jsonl`` and ``captions.shard-I-of-N.json`` (resumed
like ``manifest.jsonl``; a shard's orphan cleanup touches only its own class folders) and, when finished, a
``manifest.shard-I-of-N.done.json`` marker (its classes and the manifest's SHA-256).  The shard that finds every
shard finished merges the shard manifests into ``manifest.jsonl`` in class order, byte-identical to a
single-process run; ``--merge`` does the same by hand, and a plain run merges finished but unmerged shards before it
starts.  Merging is idempotent and refuses, in one line naming the shard, when a shard is missing or unfinished, two
shards claim one class, or ``manifest.jsonl`` holds records no shard has.  A shard whose manifest is missing (or
behind) starts from ``manifest.jsonl``'s records of its classes, so a plain run can be continued sharded and the
shard count changed after a merge.

The shard of a process comes from ``--shard-index``/``--num-shards``, else from torchrun's ``RANK``/``WORLD_SIZE``,
Slurm's ``SLURM_PROCID``/``SLURM_NTASKS`` (srun tasks) and/or ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``
(array tasks; combined with the task rank when both have more than one).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import torch

from .manifest import CAPTIONS_FILE, MANIFEST_FILE, CaptionCache, atomic_write, file_sha256, jsonl_bytes, read_json, \
    read_manifest

logger = logging.getLogger(__name__)

SHARD_MANIFEST_FILE = "manifest.shard-{index}-of-{count}.jsonl"  # one per shard; merged into MANIFEST_FILE
SHARD_CAPTIONS_FILE = "captions.shard-{index}-of-{count}.json"
SHARD_DONE_FILE = "manifest.shard-{index}-of-{count}.done.json"  # written when the shard has finished
SHARD_FILE_NAME = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.(jsonl|done\.json)$")
# (index, count) variables of one process among several, in precedence order: torchrun, then srun tasks
PROCESS_RANK_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
ARRAY_RANK_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")  # Slurm job array (--array=0-15)
LOCAL_RANK_ENV = ("LOCAL_RANK", "SLURM_LOCALID")  # the process's index on its node: picks its GPU


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the classes ``c`` with ``c % count == index`` (a class is never split)."""

    index: int = 0
    count: int = 1  # 1 = unsharded: manifest.jsonl and captions.json, as without sharding

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} of {self.count} shards; need --num-shards >= 1 and "
                             "0 <= --shard-index < --num-shards")

    def __str__(self) -> str:
        return f"shard {self.index}-of-{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def select(self, classes: Iterable[int]) -> list[int]:
        """The classes of ``classes`` (in their order) that this shard generates."""
        return [c for c in classes if c % self.count == self.index]

    def _file(self, template: str, unsharded: str) -> str:
        return template.format(index=self.index, count=self.count) if self.sharded else unsharded

    @property
    def manifest_file(self) -> str:
        return self._file(SHARD_MANIFEST_FILE, MANIFEST_FILE)

    @property
    def captions_file(self) -> str:
        return self._file(SHARD_CAPTIONS_FILE, CAPTIONS_FILE)

    @property
    def done_file(self) -> str:
        return SHARD_DONE_FILE.format(index=self.index, count=self.count)


def _env_rank(env: Mapping[str, str], index_key: str, count_key: str) -> Optional[tuple[int, int]]:
    """(index, count) from two environment variables, or None when unset or the count is 1."""
    if index_key not in env or count_key not in env:
        return None
    try:
        index, count = int(env[index_key]), int(env[count_key])
    except ValueError as err:
        raise ValueError(f"{index_key}={env[index_key]!r} / {count_key}={env[count_key]!r} are not integers; "
                         "pass --shard-index and --num-shards") from err
    return (index, count) if count > 1 else None


def _array_rank(env: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(index, count) of a Slurm array task; task ids are counted from SLURM_ARRAY_TASK_MIN in steps of _STEP."""
    rank = _env_rank(env, *ARRAY_RANK_ENV)
    if rank is None:
        return None
    first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    index, count = (rank[0] - first) // step, rank[1]
    if not 0 <= index < count:
        raise ValueError(f"SLURM_ARRAY_TASK_ID={rank[0]} is not one of {count} evenly spaced array tasks from "
                         f"{first}; submit with --array=0-{count - 1} or pass --shard-index and --num-shards")
    return index, count


def shard_from_env(env: Optional[Mapping[str, str]] = None) -> Shard:
    """The shard of this process from torchrun / srun / Slurm array variables (``Shard()`` when there are none).

    The process rank comes from ``RANK``/``WORLD_SIZE`` (torchrun), else ``SLURM_PROCID``/``SLURM_NTASKS``; an array
    task's rank from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``.  With both (several srun tasks in each
    array task), shard = array rank x tasks + task rank of array count x tasks.  A count of 1 means "not set".
    """
    env = os.environ if env is None else env
    process = next((r for keys in PROCESS_RANK_ENV if (r := _env_rank(env, *keys))), None)
    array = _array_rank(env)
    if process and array:
        return Shard(array[0] * process[1] + process[0], array[1] * process[1])
    rank = process or array
    return Shard(*rank) if rank else Shard()


def resolve_shard(index: Optional[int], count: Optional[int], env: Optional[Mapping[str, str]] = None) -> Shard:
    """``--shard-index``/``--num-shards`` when given (both), else ``shard_from_env``."""
    if index is None and count is None:
        return shard_from_env(env)
    if index is None or count is None:
        raise ValueError("--shard-index and --num-shards go together: pass both, or neither to read RANK/WORLD_SIZE, "
                         "SLURM_PROCID/SLURM_NTASKS or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    return Shard(index, count)


def shard_device(device: str, env: Optional[Mapping[str, str]] = None, device_count: Optional[int] = None) -> str:
    """``cuda`` -> ``cuda:<LOCAL_RANK or SLURM_LOCALID>`` when several GPUs are visible, so local shards don't share
    one GPU; any other device string is returned unchanged."""
    env = os.environ if env is None else env
    count = torch.cuda.device_count() if device_count is None else device_count
    local = next((env[k] for k in LOCAL_RANK_ENV if k in env), None)
    if device != "cuda" or count < 2 or local is None:
        return device
    return f"cuda:{int(local) % count}"


class ShardMergeError(ValueError):
    """Shard manifests that cannot be merged into ``manifest.jsonl`` (missing, unfinished or overlapping shards)."""


def shard_counts(root: str) -> list[int]:
    """The shard counts N named by the shard manifests and done markers under ``root``."""
    names = os.listdir(root) if osp.isdir(root) else []
    return sorted({int(m.group(2)) for n in names if (m := SHARD_FILE_NAME.match(n))})


def _shard_problem(root: str, shard: Shard) -> Optional[str]:
    """Why ``shard`` cannot be merged (None: it has finished and its manifest has not changed since)."""
    manifest = osp.join(root, shard.manifest_file)
    if not osp.isfile(manifest):
        return (f"{shard} is missing (no {shard.manifest_file}; run it with --shard-index {shard.index} "
                f"--num-shards {shard.count})")
    done = read_json(osp.join(root, shard.done_file), None)
    if done is None:
        return f"{shard} is incomplete (no {shard.done_file}: still running or killed; re-run it)"
    if done.get("manifest_sha256") != file_sha256(manifest):
        return f"{shard} is incomplete ({shard.manifest_file} changed after it finished: still running? re-run it)"
    return None


def unfinished_shards(root: str, count: int) -> list[str]:
    """One line per shard of ``count`` that has not finished (empty: all have)."""
    return [problem for i in range(count) if (problem := _shard_problem(root, Shard(i, count)))]


def unmerged_shard_counts(root: str, skip: int = 0) -> list[int]:
    """Shard counts (but ``skip``) whose shard manifests hold records that ``manifest.jsonl`` lacks."""
    merged = {json.dumps(r) for r in read_manifest(root)}
    pending = []
    for count in shard_counts(root):
        records = (r for i in range(count) for r in read_manifest(root, Shard(i, count).manifest_file))
        if count != skip and any(json.dumps(r) not in merged for r in records):
            pending.append(count)
    return pending


def _only_shard_count(root: str) -> int:
    counts = shard_counts(root)
    if not counts:
        raise ShardMergeError(f"cannot merge {root}: no shard manifest (manifest.shard-<I>-of-<N>.jsonl) there; "
                              "run the shards first or fix --output-dir")
    if len(counts) > 1:
        raise ShardMergeError(f"cannot merge {root}: it holds manifests of {' and '.join(map(str, counts))}-shard "
                              "runs; pass --num-shards")
    return counts[0]


def _claimed_records(root: str, count: int) -> list[dict]:
    """Every shard's records, after checking that no class is claimed (listed or generated) by two shards."""
    owner: dict[int, Shard] = {}
    records: list[dict] = []
    for i in range(count):
        shard = Shard(i, count)
        shard_records = read_manifest(root, shard.manifest_file)
        listed = read_json(osp.join(root, shard.done_file), {}).get("classes", [])
        for label in sorted(set(listed) | {r["class"] for r in shard_records}):
            if label in owner:
                raise ShardMergeError(f"cannot merge {root}: class {label} is claimed by {owner[label]} and {shard} "
                                      "(files of different runs?); delete the wrong shard's files and re-run it")
            owner[label] = shard
        records += shard_records
    return records


def _merge_captions(root: str, count: int) -> None:
    """Add the shards' caption caches to ``captions.json`` (so a later plain run reuses them)."""
    path = osp.join(root, CAPTIONS_FILE)
    captions = read_json(path, {})
    merged = dict(captions)
    for i in range(count):
        for image, caption in read_json(osp.join(root, Shard(i, count).captions_file), {}).items():
            merged.setdefault(image, caption)
    if merged != captions:
        atomic_write(path, json.dumps(merged, indent=0).encode())


def merge_shard_manifests(root: str, count: Optional[int] = None) -> str:
    """Merge the manifests of shards ``0..count-1`` into ``manifest.jsonl`` in class order; returns its path.

    Idempotent (an up-to-date ``manifest.jsonl`` is not rewritten).  ``count`` None: the one shard count found under
    ``root``.  Raises ``ShardMergeError`` when a shard is missing or unfinished, two shards claim one class, or
    ``manifest.jsonl`` holds records that no shard manifest has (merging would drop them).
    """
    count = count or _only_shard_count(root)
    if count < 2:
        raise ShardMergeError(f"cannot merge {root} with --num-shards {count}: an unsharded run writes "
                              f"{MANIFEST_FILE} itself; pass the shard count of the sharded run")
    problems = unfinished_shards(root, count)
    if problems:
        raise ShardMergeError(f"cannot merge {root}: {'; '.join(problems)}")
    records = sorted(_claimed_records(root, count), key=lambda r: r["class"])  # stable: generation order per class
    data = jsonl_bytes(records)
    lines = set(data.decode().splitlines())
    lost = [r for r in read_manifest(root) if json.dumps(r) not in lines]
    if lost:
        raise ShardMergeError(f"cannot merge {root}: {MANIFEST_FILE} has {len(lost)} records no shard manifest holds "
                              f"(first: class {lost[0]['class']} cycle {lost[0]['cycle']}); move it away to rebuild "
                              "it from the shards")
    path = osp.join(root, MANIFEST_FILE)
    if osp.isfile(path) and file_sha256(path) == hashlib.sha256(data).hexdigest():
        logger.info(f"{path} is already the merge of the {count} shard manifests")
    else:
        atomic_write(path, data)
        logger.info(f"Merged {count} shard manifests into {path}: {len(records)} records of "
                    f"{len({r['class'] for r in records})} classes")
    _merge_captions(root, count)
    return path


def finish_shard(root: str, shard: Shard, classes: Sequence[int]) -> bool:
    """Mark ``shard`` finished (its classes and manifest hash); merge when every shard has; True if merged here.

    A failed automatic merge is logged, not raised: this shard's images are done; ``--merge`` reports it again.
    """
    manifest = osp.join(root, shard.manifest_file)
    if not osp.isfile(manifest):  # a shard without classes
        atomic_write(manifest, b"")
    kept: dict[int, int] = defaultdict(int)
    for record in read_manifest(root, shard.manifest_file):
        kept[record["class"]] += record["kept"]
    marker = {"shard": shard.index, "num_shards": shard.count, "classes": list(classes),
              "kept": {str(c): kept[c] for c in classes}, "manifest_sha256": file_sha256(manifest)}
    atomic_write(osp.join(root, shard.done_file), json.dumps(marker, indent=1).encode())
    waiting = unfinished_shards(root, shard.count)
    if waiting:
        logger.info(f"{shard} finished; the last shard to finish merges {MANIFEST_FILE} (waiting: "
                    f"{'; '.join(waiting)})")
        return False
    try:
        merge_shard_manifests(root, shard.count)
    except ShardMergeError as err:
        logger.error(f"{shard} finished, but {err}")
        return False
    return True


def _adopt_merged_records(root: str, shard: Shard, classes: Sequence[int], real_images: dict[int, list[str]]) -> None:
    """Start ``shard`` from ``manifest.jsonl``'s records of its classes (and their cached captions) when those
    include all of its own records and more: a plain run, or a merged run with another shard count, got further."""
    mine = set(classes)
    merged = [r for r in read_manifest(root) if r["class"] in mine]
    own = read_manifest(root, shard.manifest_file)
    merged_lines = {json.dumps(r) for r in merged}
    if len(merged) <= len(own) or any(json.dumps(r) not in merged_lines for r in own):
        return
    atomic_write(osp.join(root, shard.manifest_file), jsonl_bytes(merged))
    cache = CaptionCache(root, shard.captions_file)
    paths = {p for c in classes for p in real_images.get(c, [])}
    adopted = {p: c for p, c in read_json(osp.join(root, CAPTIONS_FILE), {}).items()
               if p in paths and p not in cache.captions}
    if adopted:
        cache.captions.update(adopted)
        atomic_write(cache.path, json.dumps(cache.captions, indent=0).encode())
    logger.info(f"{shard}: starting from the {len(merged)} records of its classes in {MANIFEST_FILE} "
                f"({len(adopted)} cached captions)")


def reconcile_manifests(root: str, shard: Shard, classes: Sequence[int], real_images: dict[int, list[str]]) -> None:
    """Before generating.  A plain run merges the finished shards it finds (it must not treat their images as
    orphans).  A shard refuses while another shard count is unmerged, drops its done marker and adopts
    ``manifest.jsonl``'s records of its classes when those are ahead of its own manifest."""
    os.makedirs(root, exist_ok=True)
    if not shard.sharded:
        pending = unmerged_shard_counts(root)
        if len(pending) > 1:
            raise ShardMergeError(f"{root} holds unmerged manifests of {' and '.join(map(str, pending))}-shard runs; "
                                  "merge one with --merge --num-shards N and delete the others")
        if pending:
            logger.info(f"{root}: merging the manifests of a {pending[0]}-shard run before generating")
            merge_shard_manifests(root, pending[0])
        return
    pending = unmerged_shard_counts(root, skip=shard.count)
    if pending:
        raise ShardMergeError(f"{root} holds unmerged manifests of a {pending[0]}-shard run; merge them first "
                              f"(--merge --num-shards {pending[0]}) or run with --num-shards {pending[0]}")
    done = osp.join(root, shard.done_file)
    if osp.isfile(done):
        os.remove(done)  # until this run finishes, the shard is not complete
    _adopt_merged_records(root, shard, shard.select(classes), real_images)

