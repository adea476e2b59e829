"""Cluster mode (simulator.cluster): conservation, hand-computed RRA, WAA hand-over, scaling."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.cluster import kv_transfer_ms_per_token, simulate_cluster, simulate_replicas
from simulator.cost_model import PRESETS, CostModel
from simulator.exegpt.config import ClusterSpec, Config, Workload
from simulator.run import Workload as RunWorkload
from simulator.run import simulate

LLAMA = PRESETS["llama3-8b-h100"]
SIMPLE = CostModel("simple", 10_000, 1.0, 0.1, 0.5, 0.01)  # ms: base, per prefill token, ...


def sample_workload(n: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1, 2000, n)
    outputs = np.maximum(1, rng.lognormal(np.log(60), 1.0, n).astype(np.int64))
    return Workload(prompts.astype(np.int64), outputs, "synthetic")


def rra(b_e: int, b_d: int, n_d: int, gpus: int, tp: tuple[int, int] = (1, 0)) -> Config:
    return Config("rra", b_e, b_d, n_d, 1, tp[0], tp[1], gpus)


def waa(b_e: int, b_d: int, micro: int, enc: int, dec: int, tp: tuple[int, int] = (1, 0)) -> Config:
    return Config("waa", b_e, b_d, 1, micro, tp[0], tp[1], enc + dec, enc, dec, "c")


CONFIGS = [
    rra(8, 64, 1, 1),
    rra(16, 128, 6, 4),
    rra(16, 128, 3, 4, (2, 2)),
    rra(32, 96, 20, 8, (4, 8)),
    waa(4, 64, 1, 1, 1),
    waa(8, 128, 4, 1, 3),
    waa(8, 128, 2, 2, 4, (2, 2)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
def test_every_request_is_encoded_and_finishes_exactly_once(config: Config) -> None:
    workload = sample_workload(300, seed=1)
    reported: list[int] = []
    result = simulate_cluster(config, workload, LLAMA, ClusterSpec(8), progress=reported.append)
    assert sum(reported) == len(workload)  # a request finishing twice would overshoot
    assert np.isfinite(result.start_s).all() and np.isfinite(result.finish_s).all()
    assert (result.latency_s > 0).all() and result.start_s.min() == 0.0
    assert result.num_encode_batches >= len(workload) / config.encode_batch
    # a request of s tokens needs s - 1 decode iterations after its encode
    assert result.num_decode_iterations >= workload.output_tokens.max() - 1
    if config.policy == "rra":  # RRA encodes in backlog order, phase after phase
        assert (np.diff(result.start_s) >= 0).all()


def test_rra_one_gpu_matches_a_hand_computation() -> None:
    workload = Workload(np.array([10, 20, 30]), np.array([1, 3, 2]))
    result = simulate_cluster(rra(2, 2, 1, 1), workload, SIMPLE, ClusterSpec(1))
    # phase 1: encode #0 and #1: 1 + 0.1 * 30 + 0.01 * (11 + 21) = 4.32 ms; #0 is done
    #   decode #1 (KV 21 + 1):    1 + 0.5 + 0.22                   = 1.72 ms -> 6.04
    # phase 2: room for one: encode #2: 1 + 3 + 0.31               = 4.31 ms -> 10.35
    #   decode #1, #2 (KV 23 + 32): 1 + 1.0 + 0.55                 = 2.55 ms -> 12.90
    np.testing.assert_allclose(result.start_s * 1e3, [0, 0, 6.04])
    np.testing.assert_allclose(result.finish_s * 1e3, [4.32, 12.90, 12.90])
    np.testing.assert_allclose(result.latency_s * 1e3, [4.32, 12.90, 6.86])
    assert result.num_encode_batches == 2 and result.num_decode_iterations == 2
    assert result.peak_kv_tokens == 22 + 31  # after the second encode


def test_rra_batch_of_one_equals_the_single_worker_simulator() -> None:
    workload = sample_workload(40, seed=2)
    ours = simulate_cluster(rra(1, 1, 1, 1), workload, LLAMA, ClusterSpec(1))
    outputs = workload.output_tokens
    single = RunWorkload(np.zeros(40), workload.prompt_tokens, outputs, outputs, outputs)
    theirs = simulate(single, "fcfs", LLAMA, max_batch_size=1)
    np.testing.assert_allclose(ours.finish_s, theirs.log.completion_s, rtol=1e-9)
    np.testing.assert_allclose(ours.start_s, theirs.log.first_start_s, rtol=1e-9)


def test_waa_kv_hand_over_cost_increases_latency() -> None:
    workload = sample_workload(400, seed=3)
    config = waa(8, 128, 4, 1, 3)
    results = [
        simulate_cluster(config, workload, LLAMA, ClusterSpec(4, kv_transfer_ms_per_token=x))
        for x in (0.0, 0.0052, 0.05)
    ]
    latencies = [r.p99_length_latency_s for r in results]
    means = [float(r.latency_s.mean()) for r in results]
    assert latencies[0] < latencies[1] < latencies[2]
    assert means[0] < means[1] < means[2]
    # each encoded batch waits its own transfer: B_E prompts of ~1000 tokens x 0.05 ms ~ 0.4 s
    assert means[2] - means[0] > 0.2
    assert results[2].throughput_rps <= results[0].throughput_rps * 1.01


def test_throughput_grows_with_gpus() -> None:
    workload = sample_workload(600, seed=4)
    rra_rps = [
        simulate_cluster(rra(16, 128, 4, n), workload, LLAMA, ClusterSpec(8)).throughput_rps
        for n in (1, 2, 4, 8)
    ]
    assert all(a < b for a, b in zip(rra_rps, rra_rps[1:], strict=False))
    waa_rps = [
        simulate_cluster(waa(8, 128, 2, 1, d), workload, LLAMA, ClusterSpec(8)).throughput_rps
        for d in (1, 3)
    ]
    assert waa_rps[0] < waa_rps[1]
    one, four = (simulate_replicas(workload, LLAMA, n).throughput_rps for n in (1, 4))
    assert 3.0 < four / one < 5.0


def test_prediction_and_memory_flag() -> None:
    workload = sample_workload(200, seed=5)
    small = CostModel("small", 20_000, 1.0, 0.1, 0.5, 0.01)
    result = simulate_cluster(rra(64, 512, 8, 1), workload, small, ClusterSpec(1))
    assert result.peak_kv_tokens > 20_000 and not result.fits_memory
    prediction = result.prediction()
    assert not prediction.feasible and "KV capacity" in prediction.reason
    assert prediction.throughput_rps == result.throughput_rps
    roomy = simulate_cluster(rra(64, 512, 8, 4), workload, small, ClusterSpec(4, 5_000))
    assert roomy.kv_capacity_tokens == 4 * 20_000 + 3 * 5_000
    summary = roomy.summary()
    assert summary["requests"] == 200 and summary["fits_memory"] == roomy.fits_memory


def test_p99_length_latency_tracks_the_long_outputs() -> None:
    workload = sample_workload(1000, seed=6)
    result = simulate_cluster(rra(16, 128, 4, 2), workload, LLAMA, ClusterSpec(2))
    s99 = workload.p99_output_tokens
    long_ones = result.latency_s[workload.output_tokens >= s99 * 0.9]
    assert result.p99_length_latency_s > np.median(result.latency_s)
    assert long_ones.min() <= result.p99_length_latency_s <= long_ones.max()


def test_bad_input_is_refused() -> None:
    workload = sample_workload(10)
    with pytest.raises(ValueError, match="config uses 4 devices, the cluster has 2"):
        simulate_cluster(rra(1, 1, 1, 4), workload, LLAMA, ClusterSpec(2))
    with pytest.raises(ValueError, match="num_replicas must be an integer >= 1"):
        simulate_replicas(workload, LLAMA, 0)
    with pytest.raises(ValueError, match="link_bytes_per_s > 0"):
        kv_transfer_ms_per_token(131_072, 0)
    assert kv_transfer_ms_per_token(131_072, 25e9) == pytest.approx(0.00524288)
