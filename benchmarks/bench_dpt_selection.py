"""DPT token selection + context embedding: the reference-style loop vs ours (trainers/dpt/discrete_prompt.py).

Reference style (the control flow of alvitawa/fomo's ``GetToggle.forward``, written here): a full
``argsort`` of every row, a Python loop with ``.item()`` for BOS/EOS, decode + encode on every check, the
advance / test / undo repair with its rank-as-token-id gap, then ``one_hot (n, V) @ E``.  Ours: stable top-k,
memoised round-trip oracle, batched single-advance trials, ``E[ids]`` gather.  Same scores in one process.

Cases (n_ctx 16 over the 49408-token vocabulary by default):
- ``fresh``: independent N(0, 0.004^2) draws (initialisation); our memo is cleared before every call;
- ``drift``: a training-like trajectory, each step adds a small update to the previous scores; our memo persists
  across steps (as in training), the reference has none;
- ``embed``: the embedding alone for fixed ids (one-hot matmul vs gather), forward + backward.

    python benchmarks/bench_dpt_selection.py --device cpu --repeats 3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlprompt import clip  # noqa: E402
from vlprompt.trainers.dpt.discrete_prompt import (default_oracle, select_tokens,  # noqa: E402
                                                  straight_through_embedding)

REFERENCE_MAX_ITERS = 1000  # the reference has no cap; this only keeps a livelocked draw from hanging the run


def reference_select(scores: torch.Tensor) -> torch.Tensor:
    """The reference's selection loop, bugs included; returns the one-hot ``(n, V)``."""
    tokenizer = clip.get_tokenizer()
    bos, eos = tokenizer.sot_token_id, tokenizer.eot_token_id
    out = torch.zeros_like(scores)
    order = torch.argsort(scores, dim=-1, descending=True)
    rows = torch.arange(order.shape[0], device=scores.device)
    ranks = torch.zeros_like(order[:, 0])
    for _ in range(REFERENCE_MAX_ITERS):
        best = order[rows, ranks]
        special = False
        for i, token in enumerate(best):
            if token.item() in (bos, eos):
                ranks[i] += 1
                special = True
                break
        if special:
            continue
        if tokenizer.encode(tokenizer.decode(best.cpu().numpy())) == best.cpu().numpy().tolist():
            break
        now = scores.gather(1, ranks.unsqueeze(1)).squeeze(1)  # rank number used as a token id
        nxt = scores.gather(1, (ranks + 1).unsqueeze(1)).squeeze(1)
        positions = torch.argsort(now - nxt, descending=True)
        for i in positions:
            ranks[i] += 1
            best = order[rows, ranks]
            if tokenizer.encode(tokenizer.decode(best.cpu().numpy())) == best.cpu().numpy().tolist():
                break
            ranks[i] -= 1
        else:
            ranks[positions[0]] += 1
    out[rows, best] = 1
    return out


def reference_embed(scores: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    one_hot = reference_select(scores)
    return one_hot @ weight.to(scores.dtype), one_hot.argmax(dim=1)


def ours_embed(scores: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = select_tokens(scores, default_oracle()).ids.to(scores.device)
    return straight_through_embedding(scores, weight, ids), ids


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def score_sequences(case: str, n_ctx: int, vocab: int, steps: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if case == "fresh":
        return [(torch.randn(n_ctx, vocab, generator=g) * 0.004).to(device) for _ in range(steps)]
    scores = torch.randn(n_ctx, vocab, generator=g) * 0.004
    out = []
    for _ in range(steps):  # updates of the size of a few SGD steps (lr 0.0035 x O(0.1) gradients)
        scores = scores + torch.randn(n_ctx, vocab, generator=g) * 2e-4
        out.append(scores.to(device))
    return out


def run_case(case: str, args, weight: torch.Tensor, device: torch.device) -> dict:
    oracle = default_oracle()
    sequences = score_sequences(case, args.n_ctx, weight.shape[0], args.draws, device)
    reference_embed(sequences[0], weight), ours_embed(sequences[0], weight)  # warm-up
    ref_times, our_times, max_diff, same = [], [], 0.0, 0
    for _ in range(args.repeats):
        oracle.clear()  # each repeat starts from an empty memo
        for scores in sequences:
            if case == "fresh":
                oracle.clear()
            t_ref, (ctx_ref, ids_ref) = timed(lambda: reference_embed(scores, weight), device)
            t_our, (ctx_our, ids_our) = timed(lambda: ours_embed(scores, weight), device)
            ref_times.append(t_ref)
            our_times.append(t_our)
            max_diff = max(max_diff, (ctx_ref - ctx_our).abs().max().item())
            same += int(torch.equal(ids_ref.cpu(), ids_our.cpu()))
    ref, ours = statistics.median(ref_times), statistics.median(our_times)
    return {"case": case, "n_ctx": args.n_ctx, "vocab": weight.shape[0], "calls": len(ref_times),
            "reference_s": ref, "ours_s": ours, "speedup": ref / ours, "max_abs_diff": max_diff,
            "same_ids": same / len(ref_times), "peak_mb": peak_memory_mb(device)}


def run_embed(args, weight: torch.Tensor, device: torch.device) -> dict:
    """Embedding only (fixed ids), forward + backward: one-hot matmul vs gather."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, weight.shape[0], (args.n_ctx,), generator=g).to(device)
    upstream = torch.randn(args.n_ctx, weight.shape[1], generator=g).to(device)

    def step(dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.zeros(args.n_ctx, weight.shape[0], device=device, requires_grad=True)
        ctx = straight_through_embedding(scores, weight, ids, dense_onehot=dense)
        (ctx * upstream).sum().backward()
        return ctx.detach(), scores.grad

    step(True), step(False)
    ref_times, our_times, diff = [], [], 0.0
    for _ in range(args.repeats * 5):
        t_ref, (ctx_ref, grad_ref) = timed(lambda: step(True), device)
        t_our, (ctx_our, grad_our) = timed(lambda: step(False), device)
        ref_times.append(t_ref)
        our_times.append(t_our)
        diff = max(diff, (ctx_ref - ctx_our).abs().max().item(), (grad_ref - grad_our).abs().max().item())
    ref, ours = statistics.median(ref_times), statistics.median(our_times)
    return {"case": "embed", "n_ctx": args.n_ctx, "vocab": weight.shape[0], "calls": len(ref_times),
            "reference_s": ref, "ours_s": ours, "speedup": ref / ours, "max_abs_diff": diff, "same_ids": 1.0,
            "peak_mb": peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the score sequence")
    parser.add_argument("--draws", type=int, default=10, help="score matrices per pass")
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--width", type=int, default=512, help="token embedding width (ViT-B/16: 512)")
    parser.add_argument("--cases", nargs="+", default=["fresh", "drift", "embed"])
    parser.add_argument("--json", default="", help="write the results to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    vocab = clip.get_tokenizer().vocab_size
    weight = (torch.randn(vocab, args.width, generator=torch.Generator().manual_seed(2)) * 0.02).to(device)
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(f"# {env}")
    print(f"{'case':6} {'n_ctx':>5} {'vocab':>6} {'calls':>5} {'reference_s':>12} {'ours_s':>10} {'speedup':>8} "
          f"{'max_abs_diff':>12} {'same_ids':>8} {'peak_mb':>8}")
    results = []
    for case in args.cases:
        row = run_embed(args, weight, device) if case == "embed" else run_case(case, args, weight, device)
        results.append(row)
        print(f"{row['case']:6} {row['n_ctx']:5d} {row['vocab']:6d} {row['calls']:5d} {row['reference_s']:12.5f} "
              f"{row['ours_s']:10.5f} {row['speedup']:8.1f} {row['max_abs_diff']:12.3g} {row['same_ids']:8.2f} "
              f"{row['peak_mb']:8.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
