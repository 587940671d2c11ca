"""The files a DISEF generation run writes: ``manifest.jsonl``, ``captions.json`` and the image folders.

Every kept (and, on request, every discarded) image has one JSON record in the manifest, appended one cycle at
a time after its images are on disk, so a killed run leaves at most a cycle of orphan files, which ``Manifest.load``
removes before generation resumes.  Captions of the real images are cached per image path.  Files are replaced
atomically (write to a temporary name, then ``os.replace``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
import re
import socket
from typing import Any, Callable, Collection, Iterable, Optional, Sequence

import torch
from PIL import Image

from .config import derive_seed

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.jsonl"
CAPTIONS_FILE = "captions.json"
CONFIG_FILE = "generation_config.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GENERATED_NAME = re.compile(r"^.+_\d{5}_\d{2}\.jpg$")  # <class_folder>_<cycle>_<slot>.jpg: files we may delete


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file unique to this host and process."""
    tmp = f"{path}.tmp{socket.gethostname()}-{os.getpid()}"  # unique when shards on several nodes write one file
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def jsonl_bytes(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def read_json(path: str, default: Any) -> Any:
    """The JSON object in ``path``, or ``default`` when there is no such file."""
    if not osp.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Manifest:
    """``manifest.jsonl`` under ``root``: one JSON record per generated image, appended one cycle at a time.

    A shard's manifest (``name``) owns only its classes' ``folders``: files elsewhere are never removed by it.
    """

    def __init__(self, root: str, name: str = MANIFEST_FILE, folders: Optional[Collection[str]] = None) -> None:
        self.root, self.name = root, name
        self.path = osp.join(root, name)
        self.folders = None if folders is None else set(folders)  # None: every folder under root
        self.records: list[dict] = []

    def owns(self, relative: str) -> bool:
        """Whether ``relative`` (``<folder>/<file>`` or ``_discarded/<folder>/<file>``) is in one of our folders."""
        if self.folders is None:
            return True
        parts = osp.normpath(relative).split(os.sep)
        folder = parts[1] if parts[0] == "_discarded" and len(parts) > 2 else parts[0]
        return folder in self.folders

    def load(self) -> "Manifest":
        """Read the records and make them agree with the disk (a killed run may leave either side ahead)."""
        self.records = read_manifest(self.root, self.name)
        kept = [r for r in self.records if r["kept"]]
        missing = [r for r in kept if not osp.isfile(osp.join(self.root, r["file"]))]
        if missing:
            logger.warning(f"{len(missing)} kept images listed in {self.path} are missing on disk; "
                           "dropping their records (they will be generated again)")
            dropped = {id(r) for r in missing}
            self.records = [r for r in self.records if id(r) not in dropped]
        self._rewrite()
        listed = {osp.normpath(r["file"]) for r in self.records if r.get("file")}
        for path in image_files(self.root):
            relative = osp.normpath(osp.relpath(path, self.root))
            name = osp.basename(path)
            ours = GENERATED_NAME.match(name) or GENERATED_NAME.match(name.split(".tmp")[0])
            # written by a cycle that was killed before its records (never another shard's folder)
            if ours and relative not in listed and self.owns(relative):
                logger.warning(f"Removing {path}: not in the manifest (an interrupted cycle; it is regenerated)")
                os.remove(path)
        return self

    def _rewrite(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        atomic_write(self.path, jsonl_bytes(self.records))

    def append(self, records: Sequence[dict]) -> None:
        """Append all records of one cycle in a single write (after their images are on disk)."""
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records += list(records)

    def class_state(self, label: int) -> tuple[int, int, int]:
        """(kept images, cycles done, discarded images) of class ``label``."""
        rows = [r for r in self.records if r["class"] == label]
        kept = sum(r["kept"] for r in rows)
        cycles = 1 + max((r["cycle"] for r in rows), default=-1)
        return kept, cycles, len(rows) - kept


def read_manifest(root: str, name: str = MANIFEST_FILE) -> list[dict]:
    """Records of ``<root>/manifest.jsonl`` (or of the shard manifest ``name``); a truncated last line (killed
    mid-write) is ignored."""
    path = osp.join(root, name)
    if not osp.isfile(path):
        return []
    records = []
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines) - 1:
                raise ValueError(f"{path}:{number} is not valid JSON ({err}); fix or delete the line") from err
            logger.warning(f"{path}: ignoring a truncated last line")
    return records


def image_files(root: str, partial: bool = True) -> list[str]:
    """Every image file under ``root`` (class folders and ``_discarded``), with half-written ``.tmp`` ones."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        found += [osp.join(dirpath, n) for n in filenames
                  if n.lower().endswith(IMAGE_EXTENSIONS) or (partial and ".jpg.tmp" in n)]
    return sorted(found)


class CaptionCache:
    """Captions of real images (path -> caption) in ``captions.json``, so a re-run never captions twice."""

    def __init__(self, root: str, name: str = CAPTIONS_FILE) -> None:
        self.path = osp.join(root, name)
        self.captions: dict[str, str] = read_json(self.path, {})

    def get(self, paths: Sequence[str], label: int, classname: str, captioner: Callable[..., list[str]],
            read: Callable[[str], Image.Image]) -> list[str]:
        """Captions of ``paths`` (one class); uncached ones are captioned in one call with a seed derived from
        their paths, so an interrupted and an uninterrupted run write the same captions.  The seed uses each
        path's last two components (class folder / file), so it does not depend on where the data root lives."""
        todo = sorted({p for p in paths if p not in self.captions})
        if todo:
            names = [osp.join(osp.basename(osp.dirname(p)), osp.basename(p)) for p in todo]
            torch.manual_seed(derive_seed("caption", *names) % (2 ** 63))
            new = captioner([read(p) for p in todo], [classname] * len(todo), [label] * len(todo))
            self.captions.update(zip(todo, new))
            atomic_write(self.path, json.dumps(self.captions, indent=0).encode())
        return [self.captions[p] for p in paths]
