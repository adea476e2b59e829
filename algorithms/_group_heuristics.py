"""Heuristic Sorted-F group selection (docs/algorithms.md): first-fit greedy starts + local search.

Works on block-rounded weights w = s + o (validated by algorithms._groups). Key invariant: every
returned group is feasible, sum(w) <= cap. Local search moves (add / swap one-in-one-out /
remove) are feasible and strictly lower F (exact integer comparison), so it terminates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_INF = np.iinfo(np.int64).max // 4
# Extra start keys o + lam * w (ours, [C]); lam is this factor times sum(o) / sum(w).
_PENALTY_FACTORS = tuple(2.0**e for e in range(-4, 5))


class _Move(NamedTuple):
    sum_o: int
    size: int
    out_idx: int  # -1: nothing leaves
    in_idx: int  # -1: nothing joins


@dataclass(frozen=True, slots=True, eq=False)
class _ByWeight:  # items sorted by (weight, id), for vectorised add / swap candidates
    w: IntArray
    o: IntArray
    cap: int
    order: IntArray
    w_sorted: IntArray
    o_sorted: IntArray


def _add_move(v: _ByWeight, members: BoolArray, cur: _Move, slack: int) -> _Move | None:
    ok = ~members[v.order] & (v.w_sorted <= slack)
    vals = np.where(ok, v.o_sorted, _INF)
    pos = int(np.argmin(vals))  # smallest o, then smallest weight, then id
    if vals[pos] >= _INF:
        return None
    return _Move(cur.sum_o + int(vals[pos]), cur.size + 1, -1, int(v.order[pos]))


def _swap_move(v: _ByWeight, members: BoolArray, cur: _Move, slack: int) -> _Move | None:
    vals = np.where(~members[v.order], v.o_sorted, _INF)
    prefix_min = np.minimum.accumulate(vals)
    mem = np.flatnonzero(members)
    limit = np.searchsorted(v.w_sorted, slack + v.w[mem], side="right")  # j fits if i leaves
    best_in = np.where(limit > 0, prefix_min[np.maximum(limit - 1, 0)], _INF)
    delta = np.where(best_in < _INF, best_in - v.o[mem], _INF)
    t = int(np.argmin(delta))
    if delta[t] >= 0:
        return None
    pos = int(np.argmin(vals[: limit[t]]))
    return _Move(cur.sum_o + int(delta[t]), cur.size, int(mem[t]), int(v.order[pos]))


def _remove_move(v: _ByWeight, members: BoolArray, cur: _Move) -> _Move | None:
    if cur.size < 2:
        return None
    i = int(np.argmax(np.where(members, v.o, -1)))
    return _Move(cur.sum_o - int(v.o[i]), cur.size - 1, i, -1)


def _lower_f(a: _Move, b: _Move) -> bool:
    """Exact F(a) < F(b) by cross-multiplication (no float cycling)."""
    return a.sum_o * b.size**2 < b.sum_o * a.size**2


def _local_search(v: _ByWeight, members: BoolArray, max_moves: int) -> BoolArray:
    """Steepest descent over add / swap / remove; each move is feasible and strictly lowers F."""
    cur = _Move(int(v.o[members].sum()), int(members.sum()), -1, -1)
    for _ in range(max_moves):
        slack = v.cap - int(v.w[members].sum())
        best = cur
        adds = _add_move(v, members, cur, slack)
        for cand in (adds, _swap_move(v, members, cur, slack), _remove_move(v, members, cur)):
            if cand is not None and _lower_f(cand, best):
                best = cand
        if best is cur:
            break
        if best.out_idx >= 0:
            members[best.out_idx] = False
        if best.in_idx >= 0:
            members[best.in_idx] = True
        cur = best
    return members


def _first_fit(order: IntArray, w: IntArray, cap: int) -> IntArray:
    """Ids accepted by a first-fit scan of `order`; vectorised in rounds (one per rejection)."""
    w_ord = w[order]
    parts: list[IntArray] = []
    rem = cap
    start = 0
    while start < order.size:
        cand = np.flatnonzero(w_ord[start:] <= rem) + start  # later items only get harder to fit
        if cand.size == 0:
            break
        cum = np.cumsum(w_ord[cand])
        n_ok = int(np.searchsorted(cum, rem, side="right"))  # >= 1: cand[0] fits
        parts.append(order[cand[:n_ok]])
        rem -= int(cum[n_ok - 1])
        if n_ok == cand.size:  # every later item already failed the filter
            break
        start = int(cand[n_ok]) + 1
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _best_prefix(order: IntArray, w: IntArray, o: IntArray, cap: int) -> IntArray:
    """The paper's greedy: first-fit scan of `order`, then the prefix of the accepted ids with the
    least F."""
    acc = _first_fit(order, w, cap)
    if acc.size == 0:
        return acc
    f = np.cumsum(o[acc]) / np.arange(1, acc.size + 1, dtype=np.float64) ** 2
    return acc[: acc.size - int(np.argmin(f[::-1]))]  # ties -> the longer prefix


def greedy_group(
    w: IntArray,
    o: IntArray,
    cap: int,
    *,
    multi_start: bool,
    local_search: bool,
    max_moves: int | None,
) -> IntArray:
    """Best group over the starts, then local search; ids ascending, empty if nothing fits.

    Start 0 is the paper's order (o ascending, then weight, then id). From it alone the local
    search moves never improve F: an item that is lighter in o than a member was rejected by the
    first-fit scan with less memory in use, so it fits neither as an add nor as a swap, and adds
    or removes of later items are prefixes the prefix choice already rejected. multi_start adds
    orders by o + lam * w (ours), whose best group local search can then improve.
    """
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.arange(w.size)
    lams = (0.0,) + (tuple(f * o.sum() / w.sum() for f in _PENALTY_FACTORS) if multi_start else ())
    best = _Move(0, 0, -1, -1)
    best_ids = np.zeros(0, dtype=np.int64)
    for lam in lams:
        group = _best_prefix(np.lexsort((ids, w, o + lam * w)), w, o, cap)
        cand = _Move(int(o[group].sum()), group.size, -1, -1)
        tie_larger = not _lower_f(best, cand) and cand.size > best.size
        if group.size and (best.size == 0 or _lower_f(cand, best) or tie_larger):
            best, best_ids = cand, group
    members = np.zeros(w.size, dtype=np.bool_)
    members[best_ids] = True
    if local_search and best_ids.size:
        by_w = np.lexsort((ids, w))
        view = _ByWeight(w, o, cap, by_w, w[by_w], o[by_w])
        members = _local_search(view, members, 10 * w.size if max_moves is None else max_moves)
    return np.flatnonzero(members).astype(np.int64)
