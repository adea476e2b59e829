"""Shift detector and replanning (docs/planner.md, "Has the workload shifted?")."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.cost_model import load_cost_model
from simulator.exegpt.config import ClusterSpec, SearchSpace, Workload
from simulator.exegpt.search import Evaluator, branch_and_bound
from simulator.exegpt.shifts import ShiftDetector, ShiftThresholds, ks_statistic, replan
from simulator.exegpt.xsim import length_stats
from simulator.traces import load_trace

COST = load_cost_model("llama3-8b-h100")
SPACE = SearchSpace(encode_batches=(1, 4, 16, 64), decode_steps=(1, 4, 16, 64))


def _conv(seed: int) -> Workload:
    return Workload.from_trace(load_trace("data/traces/azure_conv_2023.csv"), 1500, seed=seed)


def _feed(detector: ShiftDetector, workload: Workload, scale: float = 1.0) -> None:
    outputs = np.maximum(1, np.round(workload.output_tokens * scale)).astype(int)
    for p, o in zip(workload.prompt_tokens, outputs, strict=True):
        detector.observe(int(p), int(o))


def test_same_distribution_does_not_trigger() -> None:
    detector = ShiftDetector(_conv(0), ShiftThresholds(window=1000, min_samples=200))
    _feed(detector, _conv(1))
    report = detector.check()
    assert report.samples == 1000 and not report.shifted, report.reasons


def test_longer_outputs_trigger_with_reasons_and_replan_gains() -> None:
    reference = _conv(0)
    detector = ShiftDetector(reference, ShiftThresholds(window=1000, min_samples=200))
    assert not detector.check().shifted  # too few samples yet
    _feed(detector, _conv(2), scale=0.6)
    report = detector.check()
    assert report.shifted and report.mean_change < -0.3
    assert any("mean" in reason for reason in report.reasons)
    cluster = ClusterSpec(2)
    plan = branch_and_bound(Evaluator(length_stats(reference), COST, cluster), SPACE, 10.0)
    assert plan.config is not None
    outcome = replan(
        plan.config, plan.replicas, detector.window_workload(), COST, cluster, 10.0, space=SPACE
    )
    assert outcome.new.config is not None
    assert outcome.gain >= 1.0  # the search is at least as good as keeping the old plan
    assert outcome.reconfigure_s == (0.0 if outcome.hot else 30.0)


def test_ks_statistic() -> None:
    a = np.arange(100)
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 1000) == pytest.approx(1.0)
