"""Samplers by name (Dassl's ``dassl/data/samplers.py`` names and behaviour)."""
from __future__ import annotations

import copy
import random
from collections import defaultdict

import numpy as np
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler  # noqa: F401

AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler"]


def _group_by_domain(data_source):
    domain_dict = defaultdict(list)
    for i, item in enumerate(data_source):
        domain_dict[item.domain].append(i)
    return domain_dict


def _domain_batches(domain_dict, pick_domains, n_img_per_domain: int):
    """Indices of batches built by drawing ``n_img_per_domain`` unused items from each picked domain,
    until a picked domain has fewer than that many left (Dassl's stopping rule)."""
    domain_dict = copy.deepcopy(domain_dict)
    final_idxs = []
    stop_sampling = False
    while not stop_sampling:
        for domain in pick_domains():
            selected = random.sample(domain_dict[domain], n_img_per_domain)
            final_idxs.extend(selected)
            for idx in selected:
                domain_dict[domain].remove(idx)
            if len(domain_dict[domain]) < n_img_per_domain:
                stop_sampling = True
    return final_idxs


def _per_domain(batch_size: int, n_domain: int) -> int:
    if batch_size % n_domain != 0:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of domains {n_domain}")
    return batch_size // n_domain


class RandomDomainSampler(Sampler):
    """Each batch holds ``batch_size // n_domain`` items from each of ``n_domain`` random domains."""

    def __init__(self, data_source, batch_size: int, n_domain: int):
        self.data_source = data_source
        self.domain_dict = _group_by_domain(data_source)
        self.domains = list(self.domain_dict.keys())
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        self.n_img_per_domain = _per_domain(batch_size, n_domain)
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        pick = lambda: random.sample(self.domains, self.n_domain)  # noqa: E731
        return iter(_domain_batches(self.domain_dict, pick, self.n_img_per_domain))

    def __len__(self):
        return self.length


class SeqDomainSampler(Sampler):
    """Every batch takes ``batch_size // n_domains`` items from every domain, in sorted domain order."""

    def __init__(self, data_source, batch_size: int):
        self.data_source = data_source
        self.domain_dict = _group_by_domain(data_source)
        self.domains = sorted(self.domain_dict.keys())
        self.n_img_per_domain = _per_domain(batch_size, len(self.domains))
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        return iter(_domain_batches(self.domain_dict, lambda: self.domains, self.n_img_per_domain))

    def __len__(self):
        return self.length


class RandomClassSampler(Sampler):
    """Each batch holds ``n_ins`` items from each of ``batch_size // n_ins`` random classes."""

    def __init__(self, data_source, batch_size: int, n_ins: int):
        if batch_size < n_ins:
            raise ValueError(f"batch_size={batch_size} must be no less than n_ins={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_dic[item.label].append(index)
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(f"{len(self.labels)} classes are fewer than the {self.ncls_per_batch} needed per batch")
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = copy.deepcopy(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = list(np.random.choice(idxs, size=self.n_ins, replace=True))
            random.shuffle(idxs)
            batch_idxs = []
            for idx in idxs:
                batch_idxs.append(idx)
                if len(batch_idxs) == self.n_ins:
                    batch_idxs_dict[label].append(batch_idxs)
                    batch_idxs = []
        avai_labels = copy.deepcopy(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if len(batch_idxs_dict[label]) == 0:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(f"Unknown sampler type: {sampler_type} (choose from {AVAI_SAMPLERS})")


class ShardedBatchSampler(Sampler):
    """Global batches from ``sampler``, of which this rank yields its contiguous slice.

    Every rank runs the same base sampler from the same seeded RNG state, so the global
    batches are exactly those of a single-process run; rank r takes items
    [r·b, (r+1)·b) of each global batch of size W·b. With per-rank mean losses and averaged
    gradients, an update equals the single-process update on the global batch.
    """

    def __init__(self, sampler, global_batch_size: int, drop_last: bool, rank: int, world_size: int):
        if global_batch_size % world_size != 0:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {world_size} processes; "
                             "DATALOADER.*.BATCH_SIZE is the global batch size under torchrun")
        rest = 0 if drop_last else len(sampler) % global_batch_size
        if rest and -(-rest // world_size) * (world_size - 1) >= rest:
            raise ValueError(f"the last training batch holds {rest} items, too few to give each of the {world_size} "
                             "processes one; change DATALOADER.TRAIN_X.BATCH_SIZE or the number of processes")
        self.sampler = sampler
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        batch = []
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.global_batch_size:
                yield batch[self.rank * self.local_batch_size:(self.rank + 1) * self.local_batch_size]
                batch = []
        if batch and not self.drop_last:
            per_rank = -(-len(batch) // self.world_size)
            shard = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            if shard:
                yield shard

    def __len__(self):
        n = len(self.sampler)
        if self.drop_last:
            return n // self.global_batch_size
        return -(-n // self.global_batch_size)


class ContiguousShardSampler(Sampler):
    """Evaluation shard: rank r reads the r-th contiguous block of ``range(n)`` (no padding)."""

    def __init__(self, n: int, rank: int, world_size: int):
        per_rank = -(-n // world_size)
        self.indices = list(range(min(n, rank * per_rank), min(n, (rank + 1) * per_rank)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class SeededItemSampler(Sampler):
    """Items of ``sampler`` paired with a seed for their random augmentation: ``(index, seed)``.

    One base number is drawn from torch's RNG per pass; an item's seed is a fixed function of it and of the
    item's index.  ``DatasetWrapper`` seeds Python's, NumPy's and torch's RNGs with it while transforming that
    item (and restores them after), so the augmentation of an item does not depend on which process or data
    worker reads it: under torchrun each rank transforms its slice of a global batch exactly as a single
    process would, and ``DATALOADER.NUM_WORKERS`` does not change results.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        import torch

        base = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        for index in self.sampler:
            yield int(index), item_seed(base, int(index))

    def __len__(self):
        return len(self.sampler)


def item_seed(base: int, index: int) -> int:
    """A 32-bit seed from a pass's base number and an item index (a multiplicative hash, no collisions
    between the indices of one pass)."""
    return (base + index * 0x9E3779B1) % (2 ** 32)
