"""DPT's discrete prompt: a score matrix over CLIP's vocabulary, token selection and a straight-through estimator.

DPT learns a score ``S (n_ctx, V)`` over the whole BPE vocabulary.  Each forward picks one real token per
position, and the context embeddings are CLIP's token-embedding rows of those ids; the backward copies
``dL/d(one-hot)`` onto ``S`` unchanged, i.e. ``dL/dS = dL/dctx @ E^T``, dense over the vocabulary.

Selection (one *iteration* = one pass that recomputes the candidates ``b_i = order_i[r_i]``):

1. Candidates are ranked per row by (score descending, id ascending); ``r_i`` starts at 0.
2. ``filter_special``: if some ``b_i`` is BOS/EOS, advance the first such position by one rank; next iteration.
3. ``roundtrip``: stop if ``encode(decode(b)) == b``; without ``roundtrip`` stop here.
4. Repair.  ``reference`` mode (what the reference code does): gap_i = ``S[i, r_i] - S[i, r_i + 1]``, the
   *rank number read as a token id*, and positions are tried in descending gap order.  ``paper`` mode (the
   paper's Algorithm 1): gap_i = score of ``b_i`` minus score of the next candidate, ascending.
   Positions are tried one at a time (single advances of the current ``b``); the first that round-trips is kept,
   and if none does the first position in the order is advanced for good.  Either way: next iteration (so a
   special token that a repair brought in is filtered again, as in the reference).
5. Safeguard (not in the reference, which can run past ``V``): after ``max_iters`` iterations, or when a rank
   would pass the vocabulary, fall back to safe tokens: for i = 0..n-1, the best-scored id that is word-final,
   not special and round-trips alone, such that the prefix ``(b_0..b_i)`` round-trips.

Exact speed-ups with identical selections: a stable top-``topk`` instead of a full sort (full stable sort when
ties straddle the cut or a rank reaches it), a memoised round-trip oracle with an exact pre-filter (the last id
must be word-final or special: ``encode`` never ends on anything else), all single-advance trials built at
once, and the forward embedding as a row gather ``E[b]`` (no dense ``(n_ctx, V)`` one-hot matmul) whose backward
is the same dense ``grad @ E^T``.  Ties are broken deterministically, where the reference's unstable ``argsort``
leaves them to the kernel.  The selection is a pure function of the scores: every rank of a torchrun job, whose
scores stay equal under averaged gradients, selects the same tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from vlprompt import clip
from vlprompt.clip.simple_tokenizer import END_OF_WORD, SimpleTokenizer

logger = logging.getLogger(__name__)

SELECT_MODES = ("reference", "paper")
DEFAULT_TOPK = 256  # candidates ranked per row; a deeper search falls back to one full sort (exact either way)
DEFAULT_MAX_ITERS = 1000  # selection iterations before the safe fallback
MEMO_LIMIT = 200_000  # round-trip results kept before the memo is cleared (about 60 MB at n_ctx=16)


class RoundTripOracle:
    """``ids -> encode(decode(ids)) == ids`` with CLIP's BPE tokenizer, memoised (a pure function of the ids).

    Also holds the vocabulary masks the selection needs: ``special`` (BOS/EOS) and ``word_final`` (ids whose
    token ends in ``</w>``).  ``checks`` counts real decode+encode calls, ``hits`` memo hits.
    """

    def __init__(self, tokenizer: Optional[SimpleTokenizer] = None) -> None:
        self.tokenizer = tokenizer or clip.get_tokenizer()
        vocab_size = self.tokenizer.vocab_size
        self.bos_id, self.eos_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        self.special = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
        self.special[[self.bos_id, self.eos_id]] = True
        self.word_final = torch.tensor([self.tokenizer.decoder[i].endswith(END_OF_WORD)
                                        for i in range(vocab_size)])  # (V,)
        self._ends_ok = (self.word_final | self.special).tolist()  # encode's last id is always one of these
        self._memo: dict[tuple[int, ...], bool] = {}
        self.checks = 0
        self.hits = 0

    @property
    def vocab_size(self) -> int:
        return self.special.numel()

    def __call__(self, ids: Sequence[int]) -> bool:
        key = tuple(int(i) for i in ids)
        cached = self._memo.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        if key and not self._ends_ok[key[-1]]:
            result = False  # exact shortcut: no encoding ends on a non-word-final, non-special id
        else:
            self.checks += 1
            result = self.tokenizer.encode(self.tokenizer.decode(key)) == list(key)
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = result
        return result

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def clear(self) -> None:
        """Forget every memoised result (benchmarks use it to time cold checks)."""
        self._memo.clear()


@lru_cache(maxsize=None)
def default_oracle() -> RoundTripOracle:
    """One shared oracle (and memo) for ``clip.get_tokenizer()``."""
    return RoundTripOracle()


def stable_order(scores: Tensor) -> Tensor:
    """Full ranking ``(n, V)`` of each row by (score descending, id ascending)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def stable_topk(scores: Tensor, k: int) -> Optional[Tensor]:
    """First ``k`` columns of ``stable_order(scores)`` without the full sort; ``None`` if ties straddle the cut."""
    values, ids = scores.topk(k + 1, dim=1)  # (n, k + 1), descending, with multiplicity
    if (values[:, k - 1] == values[:, k]).any():
        return None  # the k-th value recurs past the cut: which ids are in the top k depends on the tie-break
    ids = ids[:, :k].sort(dim=1).values  # (n, k): the exact top-k set, ascending ids
    perm = scores.gather(1, ids).argsort(dim=1, descending=True, stable=True)  # (n, k)
    return ids.gather(1, perm)  # (n, k): (score desc, id asc)


class _Candidates:
    """Ranked candidates of a score matrix, on the CPU: ``order (n, k)``, ``sorted_scores (n, k)`` and the first
    ``k + 1`` raw columns ``head`` (the reference gap reads columns by rank number).  Extends to the full
    vocabulary (one stable sort) when a rank reaches ``k - 1``."""

    def __init__(self, scores: Tensor, k: int) -> None:
        self._scores = scores  # (n, V), detached, any device and float dtype
        self.vocab_size = scores.shape[1]
        self._build(min(max(k, 2), self.vocab_size))

    def _build(self, k: int) -> None:
        order = stable_topk(self._scores, k) if k < self.vocab_size else None
        if order is None:
            k = self.vocab_size
            order = stable_order(self._scores)
        self.k = k
        self.order = order.cpu()  # (n, k)
        self.sorted_scores = self._scores.gather(1, order).cpu()  # (n, k)
        self.head = self._scores[:, :min(k + 1, self.vocab_size)].cpu()  # (n, k + 1)

    def ensure(self, max_rank: int) -> None:
        """Make ranks ``0..max_rank`` available."""
        if max_rank >= self.k:
            self._build(self.vocab_size)


@dataclass
class Selection:
    """Result of ``select_tokens``: ``ids (n_ctx,)`` on the CPU, iterations used, whether the fallback ran."""

    ids: Tensor
    iterations: int
    fallback: bool


def _repair_order(cands: _Candidates, ranks: Tensor, mode: str) -> Tensor:
    """Positions in the order the repair tries them (stable sorts, so ties are deterministic)."""
    rows = torch.arange(ranks.numel())
    if mode == "reference":  # the reference code: columns indexed by the rank number, largest "gap" first
        gap = cands.head[rows, ranks] - cands.head[rows, ranks + 1]  # (n,), in the scores' dtype
        return torch.argsort(gap.float(), descending=True, stable=True)
    gap = cands.sorted_scores[rows, ranks] - cands.sorted_scores[rows, ranks + 1]  # (n,) >= 0
    return torch.argsort(gap.float(), stable=True)  # paper (Algorithm 1): smallest gap first


def safe_fallback(scores: Tensor, oracle: RoundTripOracle) -> Tensor:
    """Per position, left to right, the best-scored safe id (word-final, not special, round-trips alone) whose
    prefix round-trips.  Returns ``(n,)`` CPU ids."""
    allowed = oracle.word_final & ~oracle.special  # (V,)
    masked = scores.detach().float().cpu().masked_fill(~allowed, float("-inf"))  # (n, V)
    order = stable_order(masked)  # rare path: one full sort
    n_allowed = int(allowed.sum())
    chosen: list[int] = []
    for i in range(scores.shape[0]):
        for token in order[i, :n_allowed].tolist():
            if oracle((token,)) and oracle(chosen + [token]):
                chosen.append(token)
                break
        else:
            raise RuntimeError(f"DPT selection: no safe token for position {i} after {chosen}")
    return torch.tensor(chosen, dtype=torch.long)


def select_tokens(
    scores: Tensor,
    oracle: Optional[RoundTripOracle] = None,
    mode: str = "reference",
    filter_special: bool = True,
    roundtrip: bool = True,
    max_iters: int = DEFAULT_MAX_ITERS,
    topk: int = DEFAULT_TOPK,
) -> Selection:
    """Select one token id per row of ``scores (n, V)`` (see the module docstring for the procedure)."""
    if mode not in SELECT_MODES:
        raise ValueError(f"select mode {mode!r}; choose one of {', '.join(SELECT_MODES)}")
    oracle = oracle or default_oracle()
    if scores.shape[1] != oracle.vocab_size:
        raise ValueError(f"scores have {scores.shape[1]} columns but the tokenizer has {oracle.vocab_size} ids")
    n, vocab_size = scores.shape
    cands = _Candidates(scores.detach(), topk)
    if not (filter_special or roundtrip):  # the reference's NOFILTER: plain argmax
        return Selection(cands.order[:, 0].clone(), 1, False)
    rows = torch.arange(n)
    ranks = torch.zeros(n, dtype=torch.long)
    iteration = 0
    while iteration < max_iters:
        iteration += 1
        max_rank = int(ranks.max())
        if max_rank + 1 >= vocab_size:
            break  # nothing left to advance to (the reference would index past V)
        cands.ensure(max_rank + 1)
        best = cands.order[rows, ranks]  # (n,)
        if filter_special:
            flagged = oracle.special[best]  # (n,)
            if bool(flagged.any()):
                ranks[int(flagged.int().argmax())] += 1  # first offending position
                continue
        if not roundtrip or oracle(best.tolist()):
            return Selection(best, iteration, False)
        trials = best.unsqueeze(0).repeat(n, 1)  # (n, n): row j = best with position j advanced once
        trials[rows, rows] = cands.order[rows, ranks + 1]
        trial_ids = trials.tolist()
        positions = _repair_order(cands, ranks, mode).tolist()
        for j in positions:
            if oracle(trial_ids[j]):
                ranks[j] += 1
                break
        else:
            ranks[positions[0]] += 1
    logger.debug(f"DPT selection ({mode}) found no round-tripping tokens in {iteration} iterations; "
                 "using the best safe tokens")
    return Selection(safe_fallback(scores, oracle), iteration, True)


class StraightThroughOneHot(torch.autograd.Function):
    """Reference path: forward one-hot ``T (n, V)`` of ``ids``; backward passes ``dL/dT`` to the scores unchanged."""

    @staticmethod
    def forward(ctx, scores: Tensor, ids: Tensor) -> Tensor:  # type: ignore[override]
        out = torch.zeros_like(scores)  # (n, V)
        out[torch.arange(ids.numel(), device=ids.device), ids] = 1
        return out

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output, None


class StraightThroughEmbedding(torch.autograd.Function):
    """``E[ids]`` in the scores' dtype; backward ``dL/dS = dL/dctx @ E^T`` (what one-hot @ E + pass-through gives)."""

    @staticmethod
    def forward(ctx, scores: Tensor, weight: Tensor, ids: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, ids)
        ctx.scores_dtype = scores.dtype
        return weight.index_select(0, ids).to(scores.dtype)  # (n, D)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], None]:  # type: ignore[override]
        weight, ids = ctx.saved_tensors
        grad_scores = grad_weight = None
        if ctx.needs_input_grad[0]:
            dtype = ctx.scores_dtype
            grad_scores = grad_output.to(dtype) @ weight.to(dtype).t()  # (n, V): dense, the estimator itself
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight).index_add_(0, ids, grad_output.to(weight.dtype))  # (V, D)
        return grad_scores, grad_weight, None


def straight_through_embedding(scores: Tensor, weight: Tensor, ids: Tensor, dense_onehot: bool = False) -> Tensor:
    """Context embeddings ``(n, D)`` of the selected ``ids`` with the straight-through gradient to ``scores``.

    ``dense_onehot=True`` is the reference's literal ``one_hot(ids) @ E`` (same values and gradient, more work).
    """
    if dense_onehot:
        return StraightThroughOneHot.apply(scores, ids) @ weight.to(scores.dtype)  # (n, V) @ (V, D)
    return StraightThroughEmbedding.apply(scores, weight, ids)


class DiscretePrompt(nn.Module):
    """Score matrix ``scores (n_ctx, V)``; ``forward(E) -> (ctx (n_ctx, D), ids (n_ctx,))``.

    Args:
        n_ctx: prompt positions.
        vocab_size: ``V`` (49408 for CLIP); must match the oracle's tokenizer.
        init_std: scores ~ N(0, init_std^2) (every DPT experiment of the reference).
        init_ids: spike init instead: zeros with ``scores[i, init_ids[i]] = init_value``.
        select_mode, filter_special, roundtrip, max_iters, topk: see ``select_tokens``.
        keep_fp32: keep the scores in fp32 even when the module is cast to half (``.half()``/``.to(dtype)``);
            ``False`` is the reference's fp16 scores without master weights.
        dense_onehot: reference's dense one-hot matmul in the forward (same result).
        oracle: round-trip oracle; default the shared one for CLIP's tokenizer.
    """

    def __init__(self, n_ctx: int, vocab_size: int, init_std: float = 0.004, init_ids: Optional[Sequence[int]] = None,
                 init_value: float = 0.001, select_mode: str = "reference", filter_special: bool = True,
                 roundtrip: bool = True, max_iters: int = DEFAULT_MAX_ITERS, topk: int = DEFAULT_TOPK,
                 keep_fp32: bool = True, dense_onehot: bool = False,
                 oracle: Optional[RoundTripOracle] = None) -> None:
        super().__init__()
        if select_mode not in SELECT_MODES:
            raise ValueError(f"select_mode={select_mode!r}; choose one of {', '.join(SELECT_MODES)}")
        scores = torch.zeros(n_ctx, vocab_size)
        if init_ids is None:
            nn.init.normal_(scores, mean=0.0, std=init_std)
        else:
            if len(init_ids) != n_ctx:
                raise ValueError(f"spike init needs {n_ctx} token ids, got {len(init_ids)}")
            scores[torch.arange(n_ctx), torch.as_tensor(list(init_ids))] = init_value
        self.scores = nn.Parameter(scores)  # (n_ctx, V)
        self.select_mode, self.filter_special, self.roundtrip = select_mode, filter_special, roundtrip
        self.max_iters, self.topk = max_iters, topk
        self.keep_fp32, self.dense_onehot = keep_fp32, dense_onehot
        self._oracle = oracle
        self.last_selection: Optional[Selection] = None
        self.fallbacks = 0  # forwards whose selection hit the iteration cap (safe tokens used)

    @property
    def oracle(self) -> RoundTripOracle:
        return self._oracle or default_oracle()

    @property
    def n_ctx(self) -> int:
        return self.scores.shape[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 (torch's signature)
        """Module casts move the scores but, with ``keep_fp32``, never round them to half precision."""
        if not self.keep_fp32:
            return super()._apply(fn, recurse)
        exact = self.scores.data
        super()._apply(fn, recurse)
        if self.scores.dtype != torch.float32:
            self.scores.data = exact.to(device=self.scores.device, dtype=torch.float32)
            if self.scores.grad is not None:
                self.scores.grad = self.scores.grad.float()
        return self

    @torch.no_grad()
    def select(self) -> Selection:
        """Current token choice (no gradient)."""
        return select_tokens(self.scores, self.oracle, self.select_mode, self.filter_special, self.roundtrip,
                             self.max_iters, self.topk)

    def forward(self, embedding_weight: Tensor) -> tuple[Tensor, Tensor]:
        """Context embeddings ``(n_ctx, D)`` in the scores' dtype and the selected ids ``(n_ctx,)``."""
        selection = self.select()
        self.last_selection = selection
        if selection.fallback:
            if not self.fallbacks:
                logger.warning(f"DPT selection ({self.select_mode}) found no round-tripping tokens within "
                               f"{self.max_iters} iterations; using the best safe tokens (warned once)")
            self.fallbacks += 1
        ids = selection.ids.to(self.scores.device)
        ctx = straight_through_embedding(self.scores, embedding_weight, ids, self.dense_onehot)
        return ctx, ids

    def decode(self, ids: Optional[Tensor] = None) -> str:
        """Text of ``ids`` (default: the current selection); word ends become spaces."""
        ids = self.select().ids if ids is None else ids
        return self.oracle.decode(ids.tolist())
