"""Distribution-shift detector and replanning (docs/planner.md, "Has the workload shifted?") [G].

A sliding window of completed requests' lengths is compared with the planning sample: a shift
is flagged when the output mean or p99 moves by more than a relative threshold, or the
two-sample KS statistic exceeds its threshold, and only once the window holds ``min_samples``.
`replan` says what a new plan would gain and what switching costs (hot when only B_E, N_D or
micro-batches change; a redeploy otherwise).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Config, SearchSpace, Workload
from simulator.exegpt.search import Evaluator, SearchResult, branch_and_bound
from simulator.exegpt.xsim import decode_batch_size, length_stats, predict


@dataclass(frozen=True, slots=True)
class ShiftThresholds:
    """Window size and trigger thresholds (relative changes; KS statistic)."""

    window: int = 2000
    min_samples: int = 200
    mean_change: float = 0.10
    p99_change: float = 0.10
    ks: float = 0.10

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise ValueError("need window >= 1 and 1 <= min_samples <= window")
        if min(self.mean_change, self.p99_change, self.ks) <= 0:
            raise ValueError("thresholds must be > 0")


@dataclass(frozen=True, slots=True)
class ShiftReport:
    """Window statistics against the planning sample; ``reasons`` empty when no shift."""

    samples: int
    mean_change: float
    p99_change: float
    ks: float
    reasons: tuple[str, ...]

    @property
    def shifted(self) -> bool:
        return bool(self.reasons)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate((a, b))
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


class ShiftDetector:
    """Keeps the last ``window`` completed requests and compares them with the plan's sample."""

    def __init__(self, reference: Workload, thresholds: ShiftThresholds | None = None) -> None:
        self.reference = reference
        self.thresholds = thresholds or ShiftThresholds()
        self._prompts: deque[int] = deque(maxlen=self.thresholds.window)
        self._outputs: deque[int] = deque(maxlen=self.thresholds.window)

    def observe(self, prompt_tokens: int, output_tokens: int) -> None:
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValueError("observed lengths must be >= 1")
        self._prompts.append(prompt_tokens)
        self._outputs.append(output_tokens)

    def window_workload(self) -> Workload:
        prompts = np.fromiter(self._prompts, dtype=np.int64)
        return Workload(prompts, np.fromiter(self._outputs, dtype=np.int64), "window")

    def check(self) -> ShiftReport:
        n, t = len(self._outputs), self.thresholds
        if n < t.min_samples:
            return ShiftReport(n, 0.0, 0.0, 0.0, ())
        window = np.fromiter(self._outputs, dtype=np.int64)
        ref = self.reference.output_tokens
        mean = float(window.mean()) / float(ref.mean()) - 1.0
        p99 = float(np.quantile(window, 0.99)) / float(np.quantile(ref, 0.99)) - 1.0
        ks = ks_statistic(window, ref)
        reasons = []
        if abs(mean) > t.mean_change:
            reasons.append(f"output mean changed {mean:+.0%}")
        if abs(p99) > t.p99_change:
            reasons.append(f"output p99 changed {p99:+.0%}")
        if ks > t.ks:
            reasons.append(f"KS statistic {ks:.3f} > {t.ks}")
        return ShiftReport(n, mean, p99, ks, tuple(reasons))


@dataclass(frozen=True, slots=True)
class Replan:
    """The running plan re-predicted on the window, the new best plan, and the switch cost."""

    old_throughput_rps: float
    old_latency_s: float
    old_meets_target: bool
    new: SearchResult
    hot: bool
    reconfigure_s: float

    @property
    def gain(self) -> float:
        """New plan's throughput over the old one's (inf when the old misses the target)."""
        if self.new.prediction is None:
            return 0.0
        new = self.new.replicas * self.new.prediction.throughput_rps
        return new / self.old_throughput_rps if self.old_meets_target else float("inf")


def _hot_switch(old: Config, new: Config) -> bool:
    fixed = ("policy", "tp_degree", "tp_gpus", "num_gpus", "encode_gpus", "decode_gpus")
    return all(getattr(old, f) == getattr(new, f) for f in fixed)


def replan(
    current: Config,
    replicas: int,
    window: Workload,
    cost: CostModel,
    cluster: ClusterSpec,
    latency_target_s: float,
    *,
    space: SearchSpace | None = None,
    redeploy_s: float = 30.0,
) -> Replan:
    """Re-run the search on the window; a layout change costs ``redeploy_s`` (pod restart).

    The running plan keeps B_E and N_D; its decode batch refills to the window's steady size.
    """
    stats = length_stats(window)
    refilled = max(1, round(decode_batch_size(current.encode_batch, current.decode_steps, stats)))
    old = predict(dataclasses.replace(current, decode_batch=refilled), stats, cost, cluster)
    new = branch_and_bound(
        Evaluator(stats, cost, cluster), space or SearchSpace(), latency_target_s
    )
    hot = new.config is not None and replicas == new.replicas and _hot_switch(current, new.config)
    return Replan(
        replicas * old.throughput_rps,
        old.latency_s,
        old.meets(latency_target_s),
        new,
        hot,
        0.0 if hot else redeploy_s,
    )
