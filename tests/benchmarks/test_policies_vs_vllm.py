"""benchmarks/policies_vs_vllm.py on a small slice: the document it writes, and its behaviour.

300 requests is about the fewest that can saturate `vllm` on llama2-70b-a100x2: with fewer than
its 256 running slots (and these short prompts) every request is admitted at once and none
queues, which the saturation search reports as an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import algorithms
from benchmarks import policies_vs_vllm as bench

COST = "llama2-70b-a100x2"
RESULT_FIELDS = (
    "mean_e2e_s",
    "p50_e2e_s",
    "p99_e2e_s",
    "mean_ttft_s",
    "p50_ttft_s",
    "p99_ttft_s",
    "goodput_rps",
    "slo_attainment",
    "evictions",
    "recomputed_tokens",
    "mean_kv_utilization",
    "mean_vs_vllm",
    "p99_vs_vllm",
    "gap_closed",
)


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = bench.Settings(
        traces=("conv",),
        cost_models=(COST,),
        policies=("vllm", "amin", "hsf"),
        limit=300,
        load_factors=(0.5, 1.5),
        jobs=1,
    )
    out = tmp_path_factory.mktemp("policies_vs_vllm")
    bench.write_outputs(bench.run_benchmark(settings), out)
    assert (out / "policies_vs_vllm.md").stat().st_size > 0
    assert (out / "policies_vs_vllm.png").stat().st_size > 0
    doc: dict[str, Any] = json.loads((out / "policies_vs_vllm.json").read_text())
    return doc


def test_json_records_settings_saturation_and_every_metric(document: dict[str, Any]) -> None:
    settings = document["settings"]
    assert settings["requests"] == 300 and settings["seed"] == 0
    assert settings["preemption"] == "resume"
    assert settings["load_factors"] == [0.5, 1.5]
    assert "queueing delay" in settings["saturation"] and "TTFT" in settings["slo"]
    (setup,) = document["setups"]
    assert setup["slo"]["ttft_s"] > setup["slo"]["tpot_s"] > 0
    sat = setup["saturation"]
    assert sat["rate_scale"] > 0 and sat["rate_rps"] > 0
    assert [load["factor"] for load in setup["loads"]] == [0.5, 1.5]
    for load in setup["loads"]:
        assert load["rate_scale"] == pytest.approx(load["factor"] * sat["rate_scale"])
        for world in ("learned", "oracle"):
            assert set(load[world]) == {"vllm", "amin", "hsf"}
            for result in load[world].values():
                assert all(field in result for field in RESULT_FIELDS)
            assert load[world]["vllm"]["mean_vs_vllm"] == 1.0
    assert {h["factor"] for h in document["targets"]["heavy"]} == {1.5}


def test_saturation_is_where_vllm_queueing_crosses_the_threshold(document: dict[str, Any]) -> None:
    sat = document["setups"][0]["saturation"]
    probes = dict(sat["probes"])
    assert probes[sat["rate_scale"]] > sat["threshold_s"]
    below = [d for s, d in probes.items() if s < sat["rate_scale"] / bench.SATURATION_TOLERANCE]
    assert below and max(below) <= sat["threshold_s"]


def test_hindsight_shortest_first_is_never_slower_than_vllm(document: dict[str, Any]) -> None:
    for load in document["setups"][0]["loads"]:
        for world in ("learned", "oracle"):
            hsf, vllm = load[world]["hsf"]["mean_e2e_s"], load[world]["vllm"]["mean_e2e_s"]
            assert hsf <= vllm
            if load["factor"] > 1.0:  # past saturation knowing the lengths must pay off
                assert hsf < 0.9 * vllm
                assert load[world]["hsf"]["gap_closed"] == pytest.approx(1.0)


def test_too_few_requests_to_queue_is_an_error_naming_limit() -> None:
    trace = bench.held_out_trace("conv", 50, seed=0)
    setup = bench.make_setup(trace, "conv", COST, bench.Settings(limit=50))
    with pytest.raises(RuntimeError, match="--limit"):
        bench.find_saturation(setup)


def test_default_policies_pick_up_a_newly_registered_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(algorithms.REGISTRY, "brand-new", object)
    policies = bench.default_policies()
    assert policies[0] == "vllm" and policies[-1] == "hsf"
    assert set(bench.BASE_POLICIES) | {"brand-new"} <= set(policies)
    assert not set(bench.EXCLUDED) & set(policies)


def test_cli_always_runs_the_baseline_and_the_bound(tmp_path: Path) -> None:
    settings, out = bench.parse_args(["--policies", "amin", "--loads", "1,0.5", "--out", "x"])
    assert settings.policies == ("vllm", "amin", "hsf")
    assert settings.load_factors == (0.5, 1.0)
    assert out == Path("x")
