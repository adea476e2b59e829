"""Hindsight optimum of the time-indexed IP, its LP bound, MC-SF's synthetic instances.

See docs/algorithms.md, "Hindsight optimum".

Column (i, k) means request i starts at slot k: it holds s_i + (t - k + 1) tokens in slots
k..k+o_i-1 (docs/algorithms.md, "The model") and finishes at c_i = k + o_i. Solved with scipy's
HiGHS after clique cuts and reduced-cost fixing against a list-scheduling incumbent; both keep an
optimum. Invariant: a returned schedule keeps every slot's memory <= capacity and lower_bound <=
total_latency.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, linprog, milp

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
#: Largest n for which 200 exact solves took < 15 min on one core (see `make_synthetic_instance`).
DEFAULT_NUM_REQUESTS: Final = 6
_MAX_CUT_ROUNDS: Final = 30
_CUT_TIME_SHARE: Final = 0.3
_TOL: Final = 1e-6


@dataclass(frozen=True, slots=True)
class HindsightResult:
    """TEL (slots) of the best schedule found; `lower_bound` is a proven bound on the optimum.

    `start_slots` is None for the LP relaxation (then total_latency == lower_bound == LP value).
    `num_variables` counts the columns handed to HiGHS (after windows and fixing).
    """

    total_latency: float
    start_slots: IntArray | None
    status: str
    is_optimal: bool
    lower_bound: float
    num_variables: int

    def __post_init__(self) -> None:
        if self.lower_bound > self.total_latency + _TOL * max(1.0, abs(self.total_latency)):
            raise ValueError(f"lower_bound {self.lower_bound} > total_latency {self.total_latency}")
        if self.is_optimal != (self.status == "optimal"):
            raise ValueError(f"is_optimal={self.is_optimal} contradicts status {self.status!r}")
        if self.num_variables < 0:
            raise ValueError(f"num_variables must be >= 0, got {self.num_variables}")


@dataclass(frozen=True, slots=True)
class SyntheticInstance:
    """One MC-SF synthetic instance: per-request arrival slot, s_i, o_i, and the KV capacity M."""

    arrival_slots: IntArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    capacity: int

    def __post_init__(self) -> None:
        _check_inputs(self.arrival_slots, self.prompt_tokens, self.output_tokens, self.capacity)


@dataclass(frozen=True, slots=True)
class _Instance:
    a: IntArray
    s: IntArray
    o: IntArray
    capacity: int


@dataclass(frozen=True, slots=True)
class _Model:
    """Columns of the time-indexed IP; row t of `memory` is slot t's KV load."""

    job: IntArray
    start: IntArray
    cost: FloatArray
    memory: sp.csr_array
    assign: sp.csr_array


def make_synthetic_instance(
    rng: np.random.Generator,
    *,
    arrivals: Literal["batch", "poisson"] = "batch",
    num_requests: int | None = None,
    rate: float | None = None,
) -> SyntheticInstance:
    """Draw M ~ U{30..50}, s_i ~ U{1..5}, o_i ~ U{1..M-s_i}, in that order.

    'batch': every arrival at slot 0. 'poisson': lambda ~ U[0.5, 1.5] per slot unless `rate` is
    given, arrival slots = floor of cumulative Exp(lambda) gaps. The paper reports 40-60 requests
    (40-60 requests), far beyond what HiGHS proves optimal; with the default 6 a solve took 1.1 s on
    average (200 trials: 3.6 min on one core, all proven), with 7 about 8-9 s, heavy-tailed.
    """
    num = DEFAULT_NUM_REQUESTS if num_requests is None else num_requests
    if num < 1:
        raise ValueError(f"num_requests must be >= 1, got {num}")
    if arrivals not in ("batch", "poisson"):
        raise ValueError(f"arrivals must be 'batch' or 'poisson', got {arrivals!r}")
    if rate is not None and (arrivals == "batch" or not rate > 0):
        raise ValueError(f"rate must be > 0 and only given with poisson arrivals, got {rate}")
    capacity = int(rng.integers(30, 51))
    prompt = rng.integers(1, 6, size=num).astype(np.int64)
    output = rng.integers(1, capacity - prompt + 1).astype(np.int64)
    if arrivals == "batch":
        arrival = np.zeros(num, dtype=np.int64)
    else:
        lam = float(rng.uniform(0.5, 1.5)) if rate is None else rate
        arrival = np.floor(np.cumsum(rng.exponential(1.0 / lam, size=num))).astype(np.int64)
    return SyntheticInstance(arrival, prompt, output, capacity)


def memory_profile(
    start_slots: IntArray, prompt_tokens: IntArray, output_tokens: IntArray
) -> IntArray:
    """KV tokens held in each slot 0..makespan-1 by requests started at `start_slots`."""
    o = np.asarray(output_tokens, dtype=np.int64)
    age = _ragged_arange(o)
    owner = np.repeat(np.arange(o.size), o)
    slots = np.asarray(start_slots, dtype=np.int64)[owner] + age
    tokens = np.asarray(prompt_tokens, dtype=np.int64)[owner] + age + 1
    return np.bincount(slots, weights=tokens).astype(np.int64)


def solve_hindsight(
    arrival_slots: IntArray,
    prompt_tokens: IntArray,
    output_tokens: IntArray,
    capacity: int,
    *,
    horizon: int | None = None,
    relax: bool = False,
    time_limit_s: float = 60.0,
) -> HindsightResult:
    """Minimise TEL = sum(c_i - a_i) over non-preemptive schedules within `capacity`.

    `horizon` bounds every completion slot. The default max(a) + sum(o) is safe: an optimal
    schedule never leaves a slot after max(a) empty (shifting the later starts one slot earlier
    stays feasible and lowers TEL). A heuristic's makespan is NOT safe in general: with M = 26,
    s = 10, o = (1, 1, 1, 3) the optimum (TEL 8) needs 4 slots but a 3-slot schedule exists (TEL 9).
    `relax=True` solves the plain LP relaxation over [a_i, horizon - o_i]. Raises ValueError for a
    request with s_i + o_i > capacity or an infeasible horizon, TimeoutError if nothing is proven
    in time (only possible for the LP, or with a horizon below the heuristic's makespan).
    """
    inst = _Instance(*_check_inputs(arrival_slots, prompt_tokens, output_tokens, capacity))
    a, o = inst.a, inst.o
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    deadline = time.monotonic() + time_limit_s
    safe_horizon = int(a.max(initial=0) + o.sum())
    last = safe_horizon if horizon is None else horizon
    if o.size and last < int((a + o).max()):
        raise ValueError(f"horizon {last} < max(a_i + o_i) = {int((a + o).max())}")
    if relax:
        return _solve_relaxed(_build_model(inst, last - o, last), capacity, deadline)
    heuristic = _heuristic_schedule(inst, max(last, safe_horizon))
    if int((heuristic + o).max(initial=0)) > last:  # caller's horizon is below its makespan
        return _solve_exact(inst, _build_model(inst, last - o, last), None, None, deadline)
    upper = _tel(heuristic, inst)
    if upper == int(o.sum()):  # nobody waits: trivially optimal
        return _proven(heuristic, upper)
    # a schedule beating `upper` keeps every request's wait below upper - sum(o)
    latest = np.minimum(last - o, a + upper - 1 - int(o.sum()))
    return _solve_exact(inst, _build_model(inst, latest, last), heuristic, upper, deadline)


def _check_inputs(
    arrival_slots: IntArray, prompt_tokens: IntArray, output_tokens: IntArray, capacity: int
) -> tuple[IntArray, IntArray, IntArray, int]:
    arrays = [np.asarray(v) for v in (arrival_slots, prompt_tokens, output_tokens)]
    if any(v.ndim != 1 or v.shape != arrays[0].shape for v in arrays):
        raise ValueError("arrival_slots, prompt_tokens, output_tokens must be 1-D, equal length")
    if any(v.size and not np.array_equal(v, np.round(v)) for v in arrays):
        raise ValueError("arrival_slots, prompt_tokens, output_tokens must be integers")
    a, s, o = (v.astype(np.int64) for v in arrays)
    if capacity < 1 or (a < 0).any() or (s < 0).any() or (o < 1).any():
        raise ValueError("need capacity >= 1, arrival_slots >= 0, prompt >= 0, output >= 1")
    too_big = np.flatnonzero(s + o > capacity)
    if too_big.size:
        raise ValueError(f"requests {too_big.tolist()} have s_i + o_i > capacity {capacity}")
    return a, s, o, int(capacity)


def _ragged_arange(counts: IntArray) -> IntArray:
    """Concatenation of arange(c) for c in counts."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - counts, counts)


def _heuristic_schedule(inst: _Instance, length: int) -> IntArray:
    """Best of a few priority orders, each placing a request at its earliest feasible start."""
    a, s, o = inst.a, inst.s, inst.o
    best = np.zeros(0, dtype=np.int64)
    for key in (o, s * o + o * (o + 1) // 2, s + o, a):
        load = np.zeros(length, dtype=np.int64)
        starts = np.zeros(a.size, dtype=np.int64)
        for i in np.lexsort((np.arange(a.size), s, a, key)):
            grow = s[i] + np.arange(1, o[i] + 1)
            windows = np.lib.stride_tricks.sliding_window_view(load, int(o[i]))
            fits = (windows[a[i] :] + grow <= inst.capacity).all(axis=1)
            starts[i] = a[i] + int(np.argmax(fits))  # fits at the current makespan at the latest
            load[starts[i] : starts[i] + o[i]] += grow
        if best.size == 0 or (starts + o).sum() < (best + o).sum():
            best = starts
    return best


def _build_model(inst: _Instance, latest: IntArray, horizon: int) -> _Model:
    a, s, o = inst.a, inst.s, inst.o
    counts = latest - a + 1
    job = np.repeat(np.arange(a.size), counts)
    start = a[job] + _ragged_arange(counts)
    col = np.repeat(np.arange(job.size), o[job])
    age = _ragged_arange(o[job])
    tokens = (s[job][col] + age + 1).astype(np.float64)
    memory = sp.csr_array((tokens, (start[col] + age, col)), shape=(horizon, job.size))
    assign = sp.csr_array((np.ones(job.size), (job, np.arange(job.size))), (a.size, job.size))
    return _Model(job, start, (start + o[job] - a[job]).astype(np.float64), memory, assign)


def _solve_relaxed(model: _Model, capacity: int, deadline: float) -> HindsightResult:
    cons = [LinearConstraint(model.memory, -np.inf, capacity), LinearConstraint(model.assign, 1, 1)]
    with _silence_native_stdout():
        res = milp(model.cost, bounds=Bounds(0, 1), constraints=cons, options=_options(deadline))
    if res.status == 1:
        raise TimeoutError("LP relaxation not solved within time_limit_s")
    if res.status != 0:
        raise ValueError(f"LP relaxation has no solution within the horizon: {res.message}")
    value = float(res.fun)
    return HindsightResult(value, None, "optimal", True, value, model.cost.size)


def _solve_exact(
    inst: _Instance, model: _Model, best: IntArray | None, upper: int | None, deadline: float
) -> HindsightResult:
    """Cut loop, reduced-cost fixing against `upper`, then HiGHS on the remaining columns."""
    lp, cuts = _cut_loop(inst, model, deadline)
    lower = math.ceil(lp.fun - _TOL) if lp.status == 0 else int(inst.o.sum())
    keep = np.ones(model.cost.size, dtype=bool)
    if upper is not None:  # only columns of schedules that beat `upper` survive
        if lp.status == 2 or lower >= upper:
            return _proven(best, upper)
        if lp.status == 0:
            keep = lp.fun + lp.lower.marginals <= upper - 1 + _TOL * upper
        if np.unique(model.job[keep]).size < inst.a.size:
            return _proven(best, upper)
    res = _run_milp(inst, model, keep, cuts, upper, deadline)
    if res.status not in (0, 1, 2):
        raise RuntimeError(f"HiGHS failed: {res.message}")
    if res.status == 2:
        if upper is None:
            raise ValueError("no feasible schedule within the given horizon")
        return _proven(best, upper)
    found = None if res.x is None else _starts_from(res.x, model, keep, inst)
    if found is not None and (best is None or _tel(found, inst) < _tel(best, inst)):
        best = found
    if best is None:
        raise TimeoutError("no feasible schedule found within time_limit_s")
    value = float(_tel(best, inst))
    if res.status == 0:
        return HindsightResult(value, best, "optimal", True, value, int(keep.sum()))
    dual = res.get("mip_dual_bound")
    if dual is not None and math.isfinite(dual):
        lower = max(lower, math.ceil(dual - _TOL))
    is_opt = lower >= value  # bounds over "beats upper" only: cap by the value found
    status = "optimal" if is_opt else "time_limit"
    return HindsightResult(value, best, status, is_opt, min(float(lower), value), int(keep.sum()))


def _proven(best: IntArray | None, upper: int | None) -> HindsightResult:
    """Nothing beats the incumbent `best` (TEL `upper`), so it is optimal."""
    assert best is not None and upper is not None
    return HindsightResult(float(upper), best, "optimal", True, float(upper), 0)


def _tel(starts: IntArray, inst: _Instance) -> int:
    return int((starts + inst.o - inst.a).sum())


def _starts_from(
    x: FloatArray, model: _Model, keep: NDArray[np.bool_], inst: _Instance
) -> IntArray:
    chosen = np.flatnonzero(keep)[x > 0.5]
    starts = np.empty(inst.a.size, dtype=np.int64)
    starts[model.job[chosen]] = model.start[chosen]
    assert memory_profile(starts, inst.s, inst.o).max(initial=0) <= inst.capacity, "IP overflow"
    return starts


def _cut_loop(
    inst: _Instance, model: _Model, deadline: float
) -> tuple[OptimizeResult, sp.csr_array]:
    """LP relaxation strengthened by rounds of clique cuts (valid for every integer schedule)."""
    cut_deadline = time.monotonic() + _CUT_TIME_SHARE * (deadline - time.monotonic())
    cut_rows = _cut_matrix([], model.cost.size)
    lp = _solve_lp(inst, model, cut_rows, deadline)
    cuts: list[IntArray] = []
    for _ in range(_MAX_CUT_ROUNDS):
        new = _clique_cuts(lp.x, inst, model, cut_deadline) if lp.status == 0 else []
        if not new:
            break
        trial_rows = _cut_matrix(cuts + new, model.cost.size)
        trial = _solve_lp(inst, model, trial_rows, cut_deadline)
        if trial.status != 0:
            break
        cuts, cut_rows, lp = cuts + new, trial_rows, trial
    return lp, cut_rows


def _solve_lp(
    inst: _Instance, model: _Model, cut_rows: sp.csr_array, deadline: float
) -> OptimizeResult:
    return linprog(
        model.cost,
        A_ub=sp.vstack([model.memory, cut_rows]).tocsr(),
        b_ub=np.r_[
            np.full(model.memory.shape[0], float(inst.capacity)), np.ones(cut_rows.shape[0])
        ],
        A_eq=model.assign,
        b_eq=np.ones(inst.a.size),
        bounds=(0, 1),
        method="highs",
        options={"time_limit": max(1e-3, deadline - time.monotonic())},
    )


def _cut_matrix(cuts: list[IntArray], num_cols: int) -> sp.csr_array:
    rows = np.repeat(np.arange(len(cuts)), [c.size for c in cuts])
    cols = np.concatenate(cuts) if cuts else np.zeros(0, dtype=np.int64)
    return sp.csr_array((np.ones(cols.size), (rows, cols)), shape=(len(cuts), num_cols))


def _clique_cuts(x: FloatArray, inst: _Instance, model: _Model, deadline: float) -> list[IntArray]:
    """Per slot t, a greedy clique (by LP value) of columns running at t, returned if violated.

    Columns p, q running at t (memory m, slots left r) cannot both be chosen iff they belong to
    one request or m_p + m_q + 2 * min(r_p, r_q) > capacity (their load where the overlap ends).
    """
    mem = model.memory
    cuts = []
    for t in range(mem.shape[0]):
        if time.monotonic() > deadline:
            break
        span = slice(mem.indptr[t], mem.indptr[t + 1])
        cols, m = mem.indices[span], mem.data[span]
        if x[cols].sum() <= 1 + _TOL:
            continue
        job = model.job[cols]
        r = model.start[cols] + inst.o[job] - 1 - t
        order = np.lexsort((-(m + r), -x[cols]))
        ok = np.ones(cols.size, dtype=bool)
        members = []
        while ok.any():
            q = order[ok[order]][0]
            members.append(q)
            ok &= (job == job[q]) | (m + m[q] + 2 * np.minimum(r, r[q]) > inst.capacity)
            ok[q] = False
        if x[cols[members]].sum() > 1 + _TOL:
            cuts.append(cols[members])
    return cuts


def _run_milp(
    inst: _Instance,
    model: _Model,
    keep: NDArray[np.bool_],
    cuts: sp.csr_array,
    upper: int | None,
    deadline: float,
) -> OptimizeResult:
    cons = [
        LinearConstraint(model.memory[:, keep], -np.inf, inst.capacity),
        LinearConstraint(model.assign[:, keep], 1, 1),
    ]
    if cuts.shape[0]:
        cons.append(LinearConstraint(cuts[:, keep], -np.inf, 1))
    # TEL is integral, so an absolute gap below 1 proves optimality
    worst = upper if upper is not None else float(model.cost.max(initial=0)) * inst.a.size
    options = _options(deadline) | {"mip_rel_gap": 0.5 / max(1.0, worst)}
    with _silence_native_stdout():
        return milp(
            model.cost[keep],
            integrality=np.ones(int(keep.sum())),
            bounds=Bounds(0, 1),
            constraints=cons,
            options=options,
        )


def _options(deadline: float) -> dict[str, float | bool]:
    return {"time_limit": max(1e-3, deadline - time.monotonic()), "presolve": True}


@contextmanager
def _silence_native_stdout() -> Iterator[None]:
    """SciPy's bundled HiGHS prints debug lines straight to file descriptor 1; hide them."""
    try:
        fd: int | None = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (e.g. a notebook)
        fd = None
    if fd is None:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
