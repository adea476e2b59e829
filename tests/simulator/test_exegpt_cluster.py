"""XSimulator predictions vs the full cluster simulation (simulator/cluster.py).

Stated error: throughput within 10%, latency of the S99 output within 25%, for the best RRA
and the best WAA plan on the Azure conv and code traces (4,000 sampled requests each, so the
saturated backlog reaches its steady state).
"""

from __future__ import annotations

import pytest

from simulator.cluster import simulate_cluster
from simulator.cost_model import load_cost_model
from simulator.exegpt.config import PRESET_WEIGHT_KV_TOKENS, ClusterSpec, SearchSpace, Workload
from simulator.exegpt.search import Evaluator, branch_and_bound
from simulator.exegpt.xsim import length_stats
from simulator.traces import load_trace

COST = load_cost_model("llama3-8b-h100")
THROUGHPUT_ERROR = 0.10
LATENCY_ERROR = 0.25


@pytest.mark.parametrize("trace", ["conv", "code"])
@pytest.mark.parametrize("policy", ["rra", "waa"])
@pytest.mark.parametrize("target_s", [5.0, 20.0])
def test_prediction_matches_cluster_simulation(trace: str, policy: str, target_s: float) -> None:
    path = f"data/traces/azure_{trace}_2023.csv"
    workload = Workload.from_trace(load_trace(path), 4000, seed=1)
    cluster = ClusterSpec(4, weight_kv_tokens=PRESET_WEIGHT_KV_TOKENS[COST.name])
    space = SearchSpace(policies=(policy,))  # type: ignore[arg-type]
    result = branch_and_bound(Evaluator(length_stats(workload), COST, cluster), space, target_s)
    assert result.config is not None and result.prediction is not None
    simulated = simulate_cluster(result.config, workload, COST, cluster).prediction()
    predicted = result.prediction
    assert simulated.throughput_rps == pytest.approx(predicted.throughput_rps, rel=THROUGHPUT_ERROR)
    assert simulated.latency_s == pytest.approx(predicted.latency_s, rel=LATENCY_ERROR)
