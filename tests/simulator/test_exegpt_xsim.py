"""XSimulator: config validation, stage times, decode-batch coupling vs Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.cost_model import load_cost_model
from simulator.exegpt.config import ClusterSpec, Config, Workload
from simulator.exegpt.timing import make_layout, stage_time_s
from simulator.exegpt.xsim import decode_batch_size, length_stats, predict
from simulator.traces import load_trace

COST = load_cost_model("llama3-8b-h100")


def test_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="encode_gpus"):
        Config("waa", 4, 40, 1, 1, 1, 0, 4, 1, 2)
    with pytest.raises(ValueError, match="tp_gpus"):
        Config("rra", 4, 40, 2, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="policy"):
        Config("orca", 4, 40, 2, 1, 1, 0, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no encode/decode split"):
        Config("rra", 4, 40, 2, 1, 1, 0, 4, 2, 2)


def test_one_stage_without_tp_is_the_cost_model() -> None:
    cluster = ClusterSpec(1)
    layout = make_layout(1, 1, 0)
    assert stage_time_s(COST, cluster, layout, 100, 5, 900) == pytest.approx(
        COST.iteration_time_s(100, 5, 900)
    )
    # eight single-device stages split the layers: an eighth of the time plus one hop
    eight = stage_time_s(COST, ClusterSpec(8), make_layout(8, 1, 0), 100, 5, 900)
    assert eight == pytest.approx(COST.iteration_time_s(100, 5, 900) / 8 + 0.02e-3)


def _monte_carlo_decode_batch(outputs: np.ndarray, b_e: int, n_d: int, phases: int) -> float:
    """Request-level RRA phases: B_E new queries per phase, N_D decode steps, batch at start."""
    rng = np.random.default_rng(7)
    left = np.zeros(0, dtype=np.int64)
    sizes = []
    for _ in range(phases):
        left = np.concatenate((left, rng.choice(outputs, size=b_e) - 1))
        left = left[left > 0]
        sizes.append(left.size)
        left = left - n_d  # a member finishing mid-phase frees its slot at the next encode
    return float(np.mean(sizes[phases // 2 :]))


@pytest.mark.parametrize("n_d", [1, 4, 16])
def test_little_coupling_matches_monte_carlo_and_paper_form_does_not(n_d: int) -> None:
    trace = load_trace("data/traces/azure_conv_2023.csv")
    workload = Workload.from_trace(trace, 2000, seed=0)
    stats = length_stats(workload)
    simulated = _monte_carlo_decode_batch(workload.output_tokens, 16, n_d, 3000)
    assert decode_batch_size(16, n_d, stats, "little") == pytest.approx(simulated, rel=0.05)
    assert abs(decode_batch_size(16, n_d, stats, "paper") / simulated - 1) > 0.2


def test_memory_infeasible_configs_are_flagged_with_a_reason() -> None:
    workload = Workload(np.full(50, 4000, dtype=np.int64), np.full(50, 2000, dtype=np.int64))
    stats = length_stats(workload)
    config = Config("rra", 256, 256 * 2000, 1, 1, 1, 0, 1)
    prediction = predict(config, stats, COST, ClusterSpec(1))
    assert not prediction.feasible and "KV needs" in prediction.reason
    assert prediction.throughput_rps > 0  # still reported, for the search's bounds
    small = predict(Config("rra", 1, 1, 1, 1, 1, 0, 1), stats, COST, ClusterSpec(1))
    assert small.feasible


def test_rra_latency_grows_with_foreign_encodes() -> None:
    workload = Workload.from_trace(load_trace("data/traces/azure_conv_2023.csv"), 300, seed=0)
    stats = length_stats(workload)
    cluster = ClusterSpec(2)
    rare = Config("rra", 8, round(decode_batch_size(8, 64, stats)), 64, 1, 1, 0, 2)
    often = Config("rra", 8, round(decode_batch_size(8, 2, stats)), 2, 1, 1, 0, 2)
    p_rare, p_often = (predict(c, stats, COST, cluster) for c in (rare, often))
    assert p_often.throughput_rps > p_rare.throughput_rps
    assert p_often.latency_s > p_rare.latency_s
