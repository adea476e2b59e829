"""Sorted-F group selection (spec §3.3-§3.7): minimise F(X) = sum(o) / |X|^2 over feasible X.

Feasibility is additive (§3.4, §9 #6): sum(s_i + o_i) <= capacity; items that cannot fit alone are
never chosen. Exact: the knapsack DP of §3.6, O(n * k_max * M) per group. Heuristic: §3.7 greedy
plus local search. `select_group` uses the DP when n_fit <= 64 and n_fit * k_max * (M + 1) <= 2e7
cells (~20 MB of take tables, ~0.1 s per group; plan_groups repeats it up to n times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Tokens = npt.ArrayLike
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_INF = np.iinfo(np.int64).max // 4  # "no subset": INF + o never overflows and never wins


def group_f(outputs: npt.ArrayLike) -> float:
    """F(X) = sum(o) / |X|^2 (§3.3); lower is better. Raises ValueError for an empty group."""
    arr = np.asarray(outputs)
    if arr.size == 0:
        raise ValueError("F is undefined for an empty group")
    return float(arr.sum()) / float(arr.size) ** 2


def _as_tokens(values: npt.ArrayLike, name: str, minimum: int) -> IntArray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
    )
    if arr.size and not integral:
        raise ValueError(f"{name} must hold integer token counts")
    out = arr.astype(np.int64)
    if out.size and int(out.min()) < minimum:
        raise ValueError(f"{name} must be >= {minimum}")
    return out


def _prepare(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, block_tokens: int
) -> tuple[IntArray, IntArray, int]:
    """Validated (weights, outputs, capacity), weights rounded UP and capacity DOWN to blocks."""
    s = _as_tokens(prompt_tokens, "prompt_tokens", 0)
    o = _as_tokens(output_tokens, "output_tokens", 1)
    if s.shape != o.shape:
        raise ValueError("prompt_tokens and output_tokens must have the same length")
    if int(capacity) != capacity or capacity < 0:
        raise ValueError(f"capacity must be a non-negative integer, got {capacity}")
    if int(block_tokens) != block_tokens or block_tokens < 1:
        raise ValueError(f"block_tokens must be a positive integer, got {block_tokens}")
    b = int(block_tokens)
    return -((s + o) // -b), o, int(capacity) // b


def _max_group_size(weights: IntArray, cap: int) -> int:
    """Largest k such that the k lightest items fit together: no feasible group is larger."""
    return int(np.count_nonzero(np.cumsum(np.sort(weights)) <= cap))


def _knapsack(w: IntArray, o: IntArray, cap: int, take: BoolArray | None) -> IntArray:
    """D[k, m] = min sum(o) over exactly-k subsets with weight <= m (all items must fit alone).

    Vectorised over k and m per item (the right-hand side reads the pre-item table, which is
    the same as iterating k descending). take[j, k-1, m] is True iff item j can be in an optimal
    (k, m) subset given items 0..j (filled if given; n * k_max * (cap + 1) bytes).
    """
    k_max = _max_group_size(w, cap)
    table = np.full((k_max + 1, cap + 1), _INF, dtype=np.int64)
    table[0] = 0
    for j in range(w.size):
        wj, rows = int(w[j]), min(j + 1, k_max)
        old = table[1 : rows + 1, wj:]
        cand = table[:rows, : cap + 1 - wj] + int(o[j])
        if take is not None:
            np.less_equal(cand, old, out=take[j, :rows, wj:])
        np.minimum(old, cand, out=old)
    return table


def knapsack_table(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, *, block_tokens: int = 1
) -> npt.NDArray[np.float64]:
    """The §3.6 table D over the items that fit alone, as floats with inf for "no subset".

    Shape (k_max + 1, capacity // block_tokens + 1); F at size k is D[k, -1] / k^2.
    """
    w, o, cap = _prepare(prompt_tokens, output_tokens, capacity, block_tokens)
    fit = w <= cap
    table = _knapsack(w[fit], o[fit], cap, take=None)
    return np.where(table >= _INF, np.inf, table.astype(np.float64))


def _best_state(table: IntArray) -> tuple[int, int]:
    """(k, m): min F, then larger k, then the smallest weight m reaching the same sum(o)."""
    sizes = np.arange(1, table.shape[0])
    finals = table[1:, -1]
    f = np.where(finals < _INF, finals / sizes.astype(np.float64) ** 2, np.inf)
    k = int(sizes[np.flatnonzero(f == f.min())[-1]])
    # D[k, :] is non-increasing in m, so the first m at the optimum is the minimal total weight.
    return k, int(np.argmax(table[k] == table[k, -1]))


def _exact(w: IntArray, o: IntArray, cap: int) -> IntArray:
    fit = np.flatnonzero(w <= cap)
    if fit.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = fit[::-1]  # the DP sees ids descending, so reconstruction meets the smallest id first
    take = np.zeros((order.size, _max_group_size(w[order], cap), cap + 1), dtype=np.bool_)
    table = _knapsack(w[order], o[order], cap, take)
    k, m = _best_state(table)
    chosen: list[int] = []
    for j in range(order.size - 1, -1, -1):  # smallest id first; take it whenever optimal
        if k > 0 and take[j, k - 1, m]:
            chosen.append(int(order[j]))
            k, m = k - 1, m - int(w[order[j]])
    return np.array(chosen, dtype=np.int64)


def select_group_exact(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, *, block_tokens: int = 1
) -> IntArray:
    """Exact argmin-F feasible group (§3.6), ids ascending; empty if no item fits alone.

    Tie-breaks are exact (§9 #8): larger |X| (chosen over D[:, M]), then smaller total weight
    (the first m with D[k, m] = D[k, M]), then the lexicographically smallest ids (greedy
    reconstruction that takes each id, smallest first, whenever an optimal set allows it). With
    block_tokens > 1, weights and the weight tie-break are in blocks, and the group is feasible
    in tokens because weights round up and capacity rounds down.
    """
    return _exact(*_prepare(prompt_tokens, output_tokens, capacity, block_tokens))


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
        for cand in (_add_move(v, members, cur, slack), _swap_move(v, members, cur, slack),
                     _remove_move(v, members, cur)):  # fmt: skip
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


def _greedy(
    w: IntArray, o: IntArray, cap: int, local_search: bool, max_moves: int | None
) -> IntArray:
    ids = np.arange(w.size)
    order = np.lexsort((ids, w, o))  # o ascending, then weight (i.e. s when o ties), then id
    accepted: list[int] = []
    used = 0
    for idx, wi in zip(order.tolist(), w[order].tolist(), strict=True):  # first-fit scan
        if used + wi <= cap:
            accepted.append(idx)
            used += wi
    if not accepted:
        return np.zeros(0, dtype=np.int64)
    acc = np.array(accepted, dtype=np.int64)
    f = np.cumsum(o[acc]) / np.arange(1, acc.size + 1, dtype=np.float64) ** 2
    best_len = acc.size - int(np.argmin(f[::-1]))  # best prefix; ties -> the longer one
    members = np.zeros(w.size, dtype=np.bool_)
    members[acc[:best_len]] = True
    if local_search:
        by_w = np.lexsort((ids, w))
        view = _ByWeight(w, o, cap, by_w, w[by_w], o[by_w])
        members = _local_search(view, members, 10 * w.size if max_moves is None else max_moves)
    return np.flatnonzero(members).astype(np.int64)


def select_group_greedy(
    prompt_tokens: Tokens,
    output_tokens: Tokens,
    capacity: int,
    *,
    local_search: bool = True,
    max_moves: int | None = None,
    block_tokens: int = 1,
) -> IntArray:
    """§3.7 greedy (best prefix of a first-fit scan by o ascending) + optional local search.

    max_moves defaults to 10 * n. Always feasible; F is never below the exact optimum.
    """
    w, o, cap = _prepare(prompt_tokens, output_tokens, capacity, block_tokens)
    return _greedy(w, o, cap, local_search, max_moves)


def select_group(
    prompt_tokens: Tokens,
    output_tokens: Tokens,
    capacity: int,
    *,
    exact_max_items: int = 64,
    exact_max_cells: int = 20_000_000,
    block_tokens: int = 1,
    local_search: bool = True,
    max_moves: int | None = None,
) -> IntArray:
    """Exact DP when n_fit <= exact_max_items and n_fit * k_max * (M + 1) <= exact_max_cells.

    n_fit counts items that fit alone and M is the (block-quantised) capacity; otherwise greedy.
    """
    w, o, cap = _prepare(prompt_tokens, output_tokens, capacity, block_tokens)
    fit = w <= cap
    n_fit = int(np.count_nonzero(fit))
    cells = n_fit * _max_group_size(w[fit], cap) * (cap + 1)
    if n_fit <= exact_max_items and cells <= exact_max_cells:
        return _exact(w, o, cap)
    return _greedy(w, o, cap, local_search, max_moves)


def plan_groups(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, **select_kwargs: Any
) -> tuple[list[IntArray], IntArray]:
    """§3.5: select groups (select_group(**select_kwargs)) until every item that fits alone is
    grouped; sort the groups by F, stable. Returns (groups, unfit): groups hold original ids
    ascending; unfit lists ids whose (block-rounded) s + o exceeds the capacity, never grouped.
    """
    block_tokens = select_kwargs.get("block_tokens", 1)
    w, o, cap = _prepare(prompt_tokens, output_tokens, capacity, block_tokens)
    s = _as_tokens(prompt_tokens, "prompt_tokens", 0)
    remaining = np.flatnonzero(w <= cap)
    groups: list[IntArray] = []
    while remaining.size:
        local = select_group(s[remaining], o[remaining], capacity, **select_kwargs)
        if local.size == 0:  # unreachable: every remaining item fits alone
            raise RuntimeError("group selection returned an empty group")
        groups.append(remaining[local])
        remaining = np.delete(remaining, local)
    groups.sort(key=lambda g: group_f(o[g]))
    return groups, np.flatnonzero(w > cap).astype(np.int64)
