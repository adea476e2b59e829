"""Prometheus metrics: vLLM names under kvsched:, per-app registries, worker and request feeds."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics
from service.protocol import GenerationRequest, TokenEvent, WorkerStats
from tests.service.fakes import MODEL, FakeBackend, FakePredictor, make_app, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    key = (name, frozenset({"model_name": MODEL, **labels}.items()))
    return samples(text)[key]


async def test_metrics_after_traffic_carry_vllm_names_and_ours() -> None:
    backend = FakeBackend(num_tokens=3)
    # a fixed interval (online recalibration off) so that every request misses above hi
    app, _ = make_app(backend, predictor=FakePredictor(1, 2), max_queue=2, online_calibration=False)
    payload = {"model": MODEL, "prompt": "a b c d", "max_tokens": 8}
    async with serve(app) as client:
        for stream in (False, True):
            await client.post("/v1/completions", json={**payload, "stream": stream})
        backend.gate = asyncio.Event()
        held = [asyncio.create_task(client.post("/v1/completions", json=payload)) for _ in "ab"]
        while len(backend.requests) < 4:
            await asyncio.sleep(0.001)
        assert (await client.post("/v1/completions", json=payload)).status_code == 429
        backend.gate.set()
        await asyncio.gather(*held)
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "_created{" not in text and "_created " not in text
    worker = {"worker": "0"}
    assert value(text, "kvsched:num_requests_running", **worker) == 1
    assert value(text, "kvsched:num_requests_waiting", **worker) == 2
    assert value(text, "kvsched:kv_cache_usage_perc", **worker) == 0.25
    assert value(text, "kvsched:num_preemptions_total", **worker) == 4
    assert value(text, "kvsched:evictions_total", policy="fake-policy", **worker) == 4
    assert value(text, "kvsched:prompt_tokens_total", **worker) == 16
    assert value(text, "kvsched:generation_tokens_total", **worker) == 12
    assert value(text, "kvsched:recomputed_prompt_tokens_total", **worker) == 16 + 4
    assert value(text, "kvsched:batch_formation_seconds_count", **worker) == 4
    assert value(text, "kvsched:request_success_total", finished_reason="stop") == 4
    assert value(text, "kvsched:admission_rejections_total", reason="queue_full") == 1
    assert value(text, "kvsched:requests_admitted_total") == 4
    assert value(text, "kvsched:interval_misses_total", side="above") == 4  # 3 tokens > hi=2
    assert value(text, "kvsched:interval_misses_total", side="below") == 0
    assert value(text, "kvsched:gateway_requests_in_flight") == 0
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "request_queue_time_seconds", "request_time_per_output_token_seconds",
                      "predicted_interval_width_tokens"):  # fmt: skip
        assert value(text, f"kvsched:{histogram}_count") == 4, histogram
    assert value(text, "kvsched:inter_token_latency_seconds_count") == 8  # 2 gaps per request
    assert value(text, "kvsched:predicted_interval_width_tokens_sum") == 4  # hi - lo = 1 each


def test_each_app_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    first, second = make_app()[0], make_app()[0]
    assert first.state.gateway.metrics.registry is not second.state.gateway.metrics.registry
    assert REGISTRY.get_sample_value("kvsched:prompt_tokens_total") is None
    assert not any(name.startswith("kvsched:") for name in REGISTRY._names_to_collectors)


def test_observe_worker_sets_gauges_and_adds_counters_and_forget_drops_gauges() -> None:
    metrics = Metrics(MODEL)
    for evictions in (2, 3):
        stats = WorkerStats(worker_id=5, num_running=4, num_waiting=1, kv_tokens=300,
                            kv_capacity_tokens=400, evictions=evictions,
                            batch_formation_s=[1e-4, 2e-4])  # fmt: skip
        metrics.observe_worker(stats, "amin")
    text = metrics.render().decode()
    assert value(text, "kvsched:kv_cache_usage_perc", worker="5") == 0.75
    assert value(text, "kvsched:evictions_total", worker="5", policy="amin") == 5
    assert value(text, "kvsched:batch_formation_seconds_count", worker="5") == 4
    metrics.forget_worker(5)
    metrics.forget_worker(6)  # unknown workers are fine
    after = samples(metrics.render().decode())
    assert not any(name == "kvsched:num_requests_running" for name, _ in after)
    assert value(metrics.render().decode(), "kvsched:evictions_total", worker="5", policy="amin")


@pytest.mark.parametrize(
    ("reason", "num_tokens", "hi", "side"),
    [("stop", 2, 8, "below"), ("stop", 9, 8, "above"), ("length", 20, 8, "above"),
     ("stop", 5, 8, None), ("length", 20, 20, None), ("abort", 1, 8, None), ("error", 30, 8, None)],
)  # fmt: skip
def test_interval_misses_count_only_known_lengths_outside_the_interval(
    reason: str, num_tokens: int, hi: int, side: str | None
) -> None:
    metrics = Metrics(MODEL)
    request = GenerationRequest("r", (1, 2), max_tokens=20, lo=3, hi=hi, arrival_s=0.0)
    observer = metrics.track(request)
    observer.on_event(TokenEvent("r", token_ids=(1,), first_scheduled_s=0.5), now_s=1.0)
    observer.on_finish(reason, num_tokens, now_s=2.0)
    observer.on_finish(reason, num_tokens, now_s=3.0)  # a second finish is ignored
    text = metrics.render().decode()
    for s in ("below", "above"):
        assert value(text, "kvsched:interval_misses_total", side=s) == (s == side)
    assert value(text, "kvsched:request_success_total", finished_reason=reason) == 1
    assert value(text, "kvsched:e2e_request_latency_seconds_sum") == 2.0
    assert value(text, "kvsched:request_queue_time_seconds_sum") == 0.5
    assert value(text, "kvsched:time_to_first_token_seconds_sum") == 1.0


async def test_http_responses_are_counted_by_route_and_status_middleware_refusals_too() -> None:
    app, _ = make_app(FakeBackend(num_tokens=2), api_keys=["k"], max_body_bytes=1024)
    auth = {"Authorization": "Bearer k"}
    payload = {"model": MODEL, "prompt": "a b", "max_tokens": 2}
    async with serve(app) as client:
        assert (await client.post("/v1/completions", json=payload, headers=auth)).status_code == 200
        assert (await client.post("/v1/completions", json=payload)).status_code == 401
        bad = {**payload, "max_tokens": 0}
        assert (await client.post("/v1/completions", json=bad, headers=auth)).status_code == 400
        big = {**payload, "prompt": "x" * 2000}
        assert (await client.post("/v1/completions", json=big, headers=auth)).status_code == 413
        assert (await client.get("/no/such/path", headers=auth)).status_code == 404
        text = (await client.get("/metrics")).text
    name = "kvsched:http_requests_total"
    for status in ("200", "401", "400", "413"):
        assert value(text, name, handler="/v1/completions", status=status) == 1, status
    assert value(text, name, handler="other", status="404") == 1


def test_workers_ready_counts_ready_workers_or_falls_back_to_the_backend() -> None:
    metrics = Metrics(MODEL)
    workers = [{"worker_id": i, "ready": i != 1} for i in range(3)]
    metrics.observe_readiness({"workers": workers}, backend_ready=False)
    assert value(metrics.render().decode(), "kvsched:workers_ready") == 2
    metrics.observe_readiness({"workers": [{"worker_id": 0}]}, backend_ready=True)
    assert value(metrics.render().decode(), "kvsched:workers_ready") == 1
    metrics.observe_readiness({"workers": []}, backend_ready=False)
    assert value(metrics.render().decode(), "kvsched:workers_ready") == 0
