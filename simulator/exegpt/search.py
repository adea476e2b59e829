"""XScheduler: monotone branch and bound over the ExeGPT knobs [P, G] (docs/planner.md).

Outer loops enumerate replicas (N split into equal data-parallel copies [G]),
policy, TP degree d, TP devices k and (WAA) the encode/decode split; each
slice's 2-D grid (RRA: B_E x encode frequency; WAA: B_E x micro-batches) is searched best-first
by its throughput upper bound. Invariant: with monotone predictions and zero tolerance the
result equals `exhaustive` (tested); `evaluated` counts distinct XSimulator calls.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Config, Prediction, SearchSpace
from simulator.exegpt.timing import make_layout
from simulator.exegpt.xsim import Coupling, LengthStats, decode_batch_size, predict

Point = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Slice:
    """One outer-loop cell; ``axis1`` is B_E, ``axis2`` is N_D (descending) or micro-batches.

    Throughput rises along both axes; latency rises along axis 2 only when ``latency_up2``.
    """

    policy: str
    num_gpus: int
    replicas: int
    tp_degree: int
    tp_gpus: int
    encode_gpus: int
    axis1: tuple[int, ...]
    axis2: tuple[int, ...]
    latency_up2: bool

    @property
    def size(self) -> int:
        return len(self.axis1) * len(self.axis2)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Best configuration under the target (None when nothing meets it) and the search cost.

    ``config`` runs on ``config.num_gpus`` devices; ``replicas`` copies of it use all N, so the
    plan's throughput is ``replicas * prediction.throughput_rps``.
    """

    config: Config | None
    prediction: Prediction | None
    replicas: int
    evaluated: int
    grid_size: int
    elapsed_s: float


def slices(space: SearchSpace, num_gpus: int, max_tp: int) -> Iterator[Slice]:
    """Every outer-loop cell of the grid for ``num_gpus`` devices, largest replica first."""
    for replicas in (r for r in range(1, num_gpus + 1) if num_gpus % r == 0):
        yield from _replica_slices(space, num_gpus // replicas, replicas, max_tp)


def _replica_slices(space: SearchSpace, n: int, replicas: int, max_tp: int) -> Iterator[Slice]:
    freq = tuple(sorted(space.decode_steps, reverse=True))
    for d in (d for d in space.tp_degrees if d <= min(n, max_tp)):
        ks = [0] if d == 1 else list(range(d, n + 1, d))
        if "rra" in space.policies:
            for k in ks:
                yield Slice("rra", n, replicas, d, k, 0, space.encode_batches, freq, True)
        if "waa" not in space.policies:
            continue
        for g_e in range(1, n):
            for k in ks:
                on_enc = min(k, (g_e // d) * d)
                if k - on_enc > ((n - g_e) // d) * d:
                    continue
                depth = make_layout(n - g_e, d, k - on_enc).depth
                micro = tuple(range(1, min(depth, space.max_micro_batches) + 1))
                cell = Slice("waa", n, replicas, d, k, g_e, space.encode_batches, micro, False)
                yield cell


class Evaluator:
    """Memoised XSimulator calls for one workload, cost model and cluster."""

    def __init__(
        self,
        stats: LengthStats,
        cost: CostModel,
        cluster: ClusterSpec,
        coupling: Coupling = "little",
    ) -> None:
        self.stats = stats
        self.cost = cost
        self.cluster = cluster
        self.coupling = coupling
        self._memo: dict[Config, Prediction] = {}

    @property
    def evaluated(self) -> int:
        return len(self._memo)

    def config(self, cell: Slice, point: Point) -> Config:
        b_e, knob = cell.axis1[point[0]], cell.axis2[point[1]]
        n = cell.num_gpus
        n_d = knob if cell.policy == "rra" else 1
        b_d = max(1, round(decode_batch_size(b_e, n_d, self.stats, self.coupling)))
        if cell.policy == "rra":
            return Config("rra", b_e, b_d, n_d, 1, cell.tp_degree, cell.tp_gpus, n)
        g_e = cell.encode_gpus
        return Config("waa", b_e, b_d, 1, knob, cell.tp_degree, cell.tp_gpus, n, g_e, n - g_e)

    def min_latency_s(self) -> float:
        """Lowest latency among evaluated memory-feasible configurations (inf if none)."""
        return min((p.latency_s for p in self._memo.values() if p.feasible), default=math.inf)

    def total_rps(self, cell: Slice, point: Point) -> float:
        """Throughput of all ``cell.replicas`` copies."""
        return cell.replicas * self(cell, point).throughput_rps

    def __call__(self, cell: Slice, point: Point) -> Prediction:
        config = self.config(cell, point)
        found = self._memo.get(config)
        if found is None:
            found = predict(config, self.stats, self.cost, self.cluster)
            self._memo[config] = found
        return found


def _box_search(
    cell: Slice, evaluate: Evaluator, target_s: float, best: float, tolerance: float
) -> tuple[Point | None, float]:
    """Best-first branch and bound over one slice; returns (point, throughput) if it beats best.

    Throughputs are totals over the slice's replicas, so the incumbent is shared across slices.
    """
    found: Point | None = None
    root = ((0, 0), (len(cell.axis1) - 1, len(cell.axis2) - 1))
    heap = [(-evaluate.total_rps(cell, root[1]), root)]
    while heap:
        neg_ub, (lo, hi) = heapq.heappop(heap)
        if -neg_ub * (1.0 + tolerance) <= best:
            break  # best-first: no remaining box can beat the incumbent
        top = evaluate(cell, hi)
        if top.meets(target_s):
            found, best = hi, cell.replicas * top.throughput_rps
            continue
        fastest = (lo[0], lo[1] if cell.latency_up2 else hi[1])
        low = evaluate(cell, fastest)
        if not low.feasible or low.latency_s > target_s * (1.0 + tolerance) or lo == hi:
            continue
        axis = 0 if hi[0] - lo[0] >= hi[1] - lo[1] else 1
        mid = (lo[axis] + hi[axis]) // 2
        for child in _halves(lo, hi, axis, mid):
            ub = evaluate.total_rps(cell, child[1])
            if ub * (1.0 + tolerance) > best:
                heapq.heappush(heap, (-ub, child))
    return found, best


def _halves(lo: Point, hi: Point, axis: int, mid: int) -> tuple[tuple[Point, Point], ...]:
    if axis == 0:
        return ((lo, (mid, hi[1])), ((mid + 1, lo[1]), hi))
    return ((lo, (hi[0], mid)), ((lo[0], mid + 1), hi))


def branch_and_bound(
    evaluator: Evaluator, space: SearchSpace, target_s: float, *, tolerance: float = 0.0
) -> SearchResult:
    """The 2-D branch and bound over every slice, sharing the incumbent across slices."""
    started = time.perf_counter()
    cells = list(slices(space, evaluator.cluster.num_gpus, evaluator.cluster.max_tp_degree))
    best_cfg: tuple[Config, int] | None = None
    best = 0.0
    for cell in cells:
        point, value = _box_search(cell, evaluator, target_s, best, tolerance)
        if point is not None and value > best:
            best_cfg, best = (evaluator.config(cell, point), cell.replicas), value
    return _result(evaluator, best_cfg, cells, started)


def exhaustive(evaluator: Evaluator, space: SearchSpace, target_s: float) -> SearchResult:
    """Evaluate every grid point; the reference the branch and bound must match."""
    started = time.perf_counter()
    cells = list(slices(space, evaluator.cluster.num_gpus, evaluator.cluster.max_tp_degree))
    best_cfg: tuple[Config, int] | None = None
    best = 0.0
    for cell in cells:
        for i in range(len(cell.axis1)):
            for j in range(len(cell.axis2)):
                total = evaluator.total_rps(cell, (i, j))
                if evaluator(cell, (i, j)).meets(target_s) and total > best:
                    best_cfg, best = (evaluator.config(cell, (i, j)), cell.replicas), total
    return _result(evaluator, best_cfg, cells, started)


def _result(
    evaluator: Evaluator, best: tuple[Config, int] | None, cells: list[Slice], started: float
) -> SearchResult:
    grid = sum(cell.size for cell in cells)
    elapsed = time.perf_counter() - started
    if best is None:
        return SearchResult(None, None, 0, evaluator.evaluated, grid, elapsed)
    config, replicas = best
    prediction = predict(config, evaluator.stats, evaluator.cost, evaluator.cluster)
    return SearchResult(config, prediction, replicas, evaluator.evaluated, grid, elapsed)
