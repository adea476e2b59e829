"""Monotonicity audit of XSimulator over the search grid (docs/planner.md, "XScheduler").

For every knob, adjacent grid points are compared against the direction the paper assumes
(docs/planner.md, "Knob directions"); a pair violates it when the metric moves the wrong way by more
than ``tolerance`` (relative). Violations are counted and the first few (at most
``MAX_EXAMPLES``) are kept as examples, never hidden: the branch and bound is only guaranteed to
match exhaustive search where the counts are zero. `kvsched plan --audit` prints this audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.exegpt.config import Prediction, SearchSpace
from simulator.exegpt.search import Evaluator, Point, Slice, slices

DEFAULT_TOLERANCE = 0.05  # relative move the wrong way that counts as a violation
MAX_EXAMPLES = 3  # violating pairs kept per knob, first found first

# knob -> (throughput rises with the knob, latency rises with the knob), as the paper assumes
EXPECTED = {
    "encode_batch": (True, True),
    "encode_frequency": (True, True),  # 1 / N_D
    "micro_batches": (False, False),  # more micro-batches: lower latency, lower throughput [P]
    "tp_gpus": (False, False),  # more TP devices: shallower pipeline [P] (its optimisation section)
}


@dataclass(slots=True)
class KnobAudit:
    """Counts for one knob: pairs compared and pairs against the expected direction."""

    knob: str
    pairs: int = 0
    throughput_violations: int = 0
    latency_violations: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, before: Prediction, after: Prediction, where: str, tolerance: float) -> None:
        if not (before.feasible and after.feasible):
            return
        thr_up, lat_up = EXPECTED[self.knob]
        self.pairs += 1
        bad_thr = _wrong_way(before.throughput_rps, after.throughput_rps, thr_up, tolerance)
        bad_lat = _wrong_way(before.latency_s, after.latency_s, lat_up, tolerance)
        self.throughput_violations += bad_thr
        self.latency_violations += bad_lat
        if (bad_thr or bad_lat) and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                f"{where}: throughput {before.throughput_rps:.3g} -> {after.throughput_rps:.3g}, "
                f"latency {before.latency_s:.3g} -> {after.latency_s:.3g} s"
            )

    def to_dict(self) -> dict[str, object]:
        expected = EXPECTED[self.knob]
        return {
            "knob": self.knob,
            "expected": {"throughput_up": expected[0], "latency_up": expected[1]},
            "pairs": self.pairs,
            "throughput_violations": self.throughput_violations,
            "latency_violations": self.latency_violations,
            "examples": self.examples,
        }


def _wrong_way(before: float, after: float, rises: bool, tolerance: float) -> bool:
    scale = max(abs(before), 1e-12)
    change = (after - before) / scale
    return change < -tolerance if rises else change > tolerance


def audit_monotonicity(
    evaluator: Evaluator, space: SearchSpace, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, KnobAudit]:
    """Compare neighbours along B_E, 1/N_D (RRA), micro-batches (WAA) and k (RRA, same d)."""
    audits = {knob: KnobAudit(knob) for knob in EXPECTED}
    cells = list(slices(space, evaluator.cluster.num_gpus, evaluator.cluster.max_tp_degree))
    for cell in cells:
        second = "encode_frequency" if cell.policy == "rra" else "micro_batches"
        for i in range(len(cell.axis1)):
            for j in range(len(cell.axis2)):
                here = evaluator(cell, (i, j))
                if i + 1 < len(cell.axis1):
                    _pair(audits["encode_batch"], evaluator, cell, (i, j), (i + 1, j), tolerance)
                if j + 1 < len(cell.axis2):
                    after = evaluator(cell, (i, j + 1))
                    audits[second].add(here, after, _where(evaluator, cell, (i, j)), tolerance)
    _audit_tp(audits["tp_gpus"], evaluator, cells, tolerance)
    return audits


def _pair(
    audit: KnobAudit, evaluator: Evaluator, cell: Slice, a: Point, b: Point, tolerance: float
) -> None:
    audit.add(evaluator(cell, a), evaluator(cell, b), _where(evaluator, cell, a), tolerance)


def _where(evaluator: Evaluator, cell: Slice, point: Point) -> str:
    return evaluator.config(cell, point).label()


def _audit_tp(audit: KnobAudit, evaluator: Evaluator, cells: list[Slice], tolerance: float) -> None:
    rra = [c for c in cells if c.policy == "rra"]
    for cell in rra:
        nxt = [
            c
            for c in rra
            if (c.num_gpus, c.tp_degree) == (cell.num_gpus, cell.tp_degree)
            and c.tp_gpus == cell.tp_gpus + cell.tp_degree
        ]
        for other in nxt:
            for i in range(len(cell.axis1)):
                for j in range(len(cell.axis2)):
                    before, after = evaluator(cell, (i, j)), evaluator(other, (i, j))
                    audit.add(before, after, _where(evaluator, cell, (i, j)), tolerance)
