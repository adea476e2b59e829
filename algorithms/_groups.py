"""Sorted-F group selection (docs/algorithms.md): minimise F(X) = sum(o) / |X|^2 over feasible X.

Feasibility is additive: sum(s_i + o_i) <= capacity; items that cannot fit alone are
never chosen. Exact: a knapsack DP, O(n * k_max * M) per group. Heuristic (in
_group_heuristics): the paper's greedy, extra starts (ours) and local search. `select_group` uses
the DP when n_fit <= 64 and n_fit * k_max * (M + 1) <= 2e7 cells (~20 MB of take tables, well under
a second per group; plan_groups repeats it up to n times, so O(n^3 M) in all).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from algorithms._group_heuristics import greedy_group

Tokens = npt.ArrayLike
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_INF = np.iinfo(np.int64).max // 4  # "no subset": INF + o never overflows and never wins


def group_f(outputs: npt.ArrayLike) -> float:
    """F(X) = sum(o) / |X|^2; lower is better. Raises ValueError for an empty group."""
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
        wj = int(w[j])
        rows = min(j + 1, k_max)
        old = table[1 : rows + 1, wj:]
        cand = table[:rows, : cap + 1 - wj] + int(o[j])
        if take is not None:
            np.less_equal(cand, old, out=take[j, :rows, wj:])
        np.minimum(old, cand, out=old)
    return table


def knapsack_table(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, *, block_tokens: int = 1
) -> npt.NDArray[np.float64]:
    """The DP table D (least sum(o) of k items of weight w) over the items that fit alone, as floats
    with inf for "no subset".

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
    """Exact argmin-F feasible group (the DP), ids ascending; empty if no item fits alone.

    Tie-breaks are exact (docs/algorithms.md, "Choices where the papers are open"): larger |X|
    (chosen over D[:, M]), then smaller total weight (the first m with D[k, m] = D[k, M]), then the
    lexicographically smallest ids (greedy reconstruction that takes each id, smallest first,
    whenever an optimal set allows it). With block_tokens > 1, weights and the weight tie-break are
    in blocks, and the group is feasible in tokens because weights round up and capacity rounds
    down.
    """
    return _exact(*_prepare(prompt_tokens, output_tokens, capacity, block_tokens))


def select_group_greedy(
    prompt_tokens: Tokens,
    output_tokens: Tokens,
    capacity: int,
    *,
    local_search: bool = True,
    max_moves: int | None = None,
    multi_start: bool = True,
    block_tokens: int = 1,
) -> IntArray:
    """The paper's greedy (best prefix of a first-fit scan by o ascending) + optional local search.

    multi_start=True (ours) also scans in order of o + lam * w for a grid of lam and keeps the
    best start; False is the paper's single start. max_moves defaults to 10 * n. Always
    feasible; F is never below the exact optimum.
    """
    w, o, cap = _prepare(prompt_tokens, output_tokens, capacity, block_tokens)
    return greedy_group(
        w, o, cap, multi_start=multi_start, local_search=local_search, max_moves=max_moves
    )


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
    multi_start: bool = True,
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
    return greedy_group(
        w, o, cap, multi_start=multi_start, local_search=local_search, max_moves=max_moves
    )


def plan_groups(
    prompt_tokens: Tokens, output_tokens: Tokens, capacity: int, **select_kwargs: Any
) -> tuple[list[IntArray], IntArray]:
    """Sorted-F: select groups (select_group(**select_kwargs)) until every item that fits alone is
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
