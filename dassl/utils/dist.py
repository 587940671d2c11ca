"""Process-group helpers for ``torchrun`` (one process per GPU, or several CPU processes with gloo).

Everything degrades to the single-process case when ``torch.distributed`` is not initialised,
so trainers call these unconditionally.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process", "barrier",
           "all_gather_object", "average_gradients", "broadcast_object", "destroy_distributed"]


def init_distributed(use_cuda: bool = True) -> bool:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1); return True if joined."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if use_cuda and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (a one-item list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(params) -> None:
    """Average ``.grad`` of ``params`` over ranks (what DDP does), flattening into one all-reduce."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
