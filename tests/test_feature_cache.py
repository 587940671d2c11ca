"""Frozen-feature cache: hits return the stored features, any key part invalidates, writes are atomic."""
import multiprocessing as mp
import os

import torch
import torch.nn as nn

from vlprompt.trainers.common.feature_cache import FeatureCache, items_digest, module_digest


def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(6, 4)


def _key(cache, encoder, paths=("a.jpg", "b.jpg"), labels=(0, 1), transform="Compose(Resize(32))"):
    return cache.make_key(module_digest(encoder), "Synthetic", "test", items_digest(paths, labels), transform)


def test_hit_returns_identical_features(tmp_path):
    cache = FeatureCache(str(tmp_path))
    enc = _encoder(0)
    x = torch.randn(5, 6)
    calls = []

    def compute():
        calls.append(1)
        return enc(x).detach(), torch.arange(5)

    f1, l1 = cache.get_or_compute(_key(cache, enc), compute)
    f2, l2 = cache.get_or_compute(_key(cache, enc), compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(f1, f2) and torch.equal(l1, l2)


def test_every_key_part_invalidates(tmp_path):
    cache = FeatureCache(str(tmp_path))
    enc = _encoder(0)
    base = _key(cache, enc)
    changed_weights = _encoder(0)
    with torch.no_grad():
        changed_weights.weight[0, 0] += 1e-3
    assert _key(cache, changed_weights) != base
    assert _key(cache, _encoder(0)) == base  # same weights, new object → same key
    assert _key(cache, enc, transform="Compose(Resize(64))") != base
    assert _key(cache, enc, paths=("a.jpg", "c.jpg")) != base
    assert _key(cache, enc, paths=("b.jpg", "a.jpg"), labels=(1, 0)) != base  # order matters
    assert _key(cache, enc, labels=(0, 2)) != base


def test_disabled_cache_never_writes(tmp_path):
    cache = FeatureCache(str(tmp_path / "c"), enabled=False)
    cache.get_or_compute("k", lambda: (torch.ones(2, 2), torch.zeros(2)))
    cache.get_or_compute("k", lambda: (torch.ones(2, 2), torch.zeros(2)))
    assert cache.misses == 2 and not os.path.exists(tmp_path / "c")


def _writer(root: str, value: float, n: int) -> None:
    cache = FeatureCache(root)
    for _ in range(n):
        cache.save("entry", {"features": torch.full((256, 64), value), "labels": torch.zeros(256)})


def test_concurrent_writers_leave_one_valid_file(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), float(v), 20)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert sorted(os.listdir(tmp_path)) == ["entry.pt"]  # no temp files left behind
    entry = FeatureCache(str(tmp_path)).load("entry")
    assert entry is not None and entry["features"].shape == (256, 64)
    value = entry["features"][0, 0].item()
    assert value in (1.0, 2.0) and torch.all(entry["features"] == value)  # one writer's file, whole
