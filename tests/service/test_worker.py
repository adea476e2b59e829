"""The worker in-process (a thread, no spawn): streaming, evictions, rejections, cancel, failure."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from service.engines.sim import (
    EOS_TOKEN_ID,
    SimTokenizer,
    output_length,
    placeholder_tokens,
    request_seed,
)
from service.protocol import GenerationRequest, TokenEvent
from service.settings import Settings
from service.worker import ipc
from service.worker.overhead import HostOverhead
from service.worker.worker import Worker, worker_main

PROMPT = tuple(range(5, 15))


class Outbox:
    """The worker's pipe, as a queue the test reads."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()

    def send(self, obj: Any) -> None:
        self.messages.put(obj)


class Harness:
    """A Worker serving in a thread; collects events per request and every Stats report."""

    def __init__(self, settings: Settings) -> None:
        self.inbound: queue.Queue[Any] = queue.Queue()
        self.outbox = Outbox()
        self.worker = Worker(settings, 0, self.inbound, self.outbox)
        self.events: dict[str, list[TokenEvent]] = {}
        self.stats: list[ipc.Stats] = []
        self.thread = threading.Thread(target=self.worker.serve, daemon=True)

    def submit(self, request: GenerationRequest) -> None:
        self.inbound.put(ipc.Submit(request))

    def pump(self, timeout_s: float = 10.0) -> None:
        """File the worker's next message."""
        message = self.outbox.messages.get(timeout=timeout_s)
        if isinstance(message, ipc.Events):
            for event in message.events:
                self.events.setdefault(event.request_id, []).append(event)
        elif isinstance(message, ipc.Stats):
            self.stats.append(message)

    def wait_final(self, request_ids: list[str]) -> None:
        while not all(self.final(r) for r in request_ids):
            self.pump()

    def wait_idle_stats(self) -> ipc.Stats:
        """The worker's report once nothing runs or waits (it sends one on going idle)."""
        while not self.stats or self.stats[-1].stats.num_running + self.stats[-1].stats.num_waiting:
            self.pump()
        return self.stats[-1]

    def final(self, request_id: str) -> TokenEvent | None:
        events = self.events.get(request_id, [])
        return events[-1] if events and events[-1].finish_reason else None

    def tokens(self, request_id: str) -> list[int]:
        return [t for e in self.events[request_id] for t in e.token_ids]


@pytest.fixture
def harness_factory() -> Iterator[Any]:
    started: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        fields: dict[str, Any] = {"predictor": "none", "policy": "amin", "speedup": 1e6}
        harness = Harness(Settings(**(fields | overrides)))
        harness.thread.start()
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.inbound.put(ipc.Shutdown())
        harness.thread.join(5.0)
        assert not harness.thread.is_alive()


def request(request_id: str, max_tokens: int = 120, **extra: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id, PROMPT, max_tokens=max_tokens, lo=5, hi=max_tokens, **extra
    )


def expected_tokens(req: GenerationRequest, seed: int = 0) -> list[int]:
    length = output_length(req, seed)
    seeds = np.full(length, request_seed(seed, req.request_id), dtype=np.int64)
    tokens: list[int] = placeholder_tokens(seeds, np.arange(length, dtype=np.int64)).tolist()
    if length < req.max_tokens:
        tokens[-1] = EOS_TOKEN_ID
    return tokens


def test_worker_streams_every_token_once_and_reports_stats(harness_factory: Any) -> None:
    h = harness_factory(kv_tokens=20_000)
    requests = [request(f"r{i}", 120, ignore_eos=True) for i in range(3)]
    requests += [request(f"s{i}", 2000) for i in range(3)]  # natural lengths, ~200
    for req in requests:
        h.submit(req)
    h.wait_final([r.request_id for r in requests])
    for req in requests:
        final = h.final(req.request_id)
        assert final is not None and final.error is None
        assert h.tokens(req.request_id) == expected_tokens(req)
        assert final.num_output_tokens == len(expected_tokens(req))
        assert final.finish_reason == ("length" if req.ignore_eos else "stop")
        assert final.num_prompt_tokens == len(PROMPT) and final.first_scheduled_s is not None
        text = "".join(e.text for e in h.events[req.request_id])
        assert text == SimTokenizer().decode(h.tokens(req.request_id))
    idle = h.wait_idle_stats()
    assert idle.stats.kv_tokens == 0 and idle.stats.kv_capacity_tokens == 20_000
    generated = sum(s.stats.generation_tokens for s in h.stats)
    assert generated == sum(len(expected_tokens(r)) for r in requests)
    assert sum(s.stats.prompt_tokens for s in h.stats) == len(requests) * len(PROMPT)
    num_iterations = sum(s.stats.iterations for s in h.stats)
    assert num_iterations >= 120 and num_iterations == sum(
        len(s.stats.batch_formation_s) for s in h.stats
    )


@pytest.mark.parametrize("preemption", ["resume", "restart"])
@pytest.mark.parametrize("predictor", ["none", "default"])  # default: the refiner runs too
def test_evicted_requests_stream_every_token_exactly_once(
    harness_factory: Any, predictor: str, preemption: str
) -> None:
    # 8 x (10 + 120) overflow 300 KV tokens: evictions
    h = harness_factory(kv_tokens=300, predictor=predictor, preemption=preemption)
    requests = [request(f"e{i}", ignore_eos=i % 2 == 0) for i in range(8)]
    for req in requests:
        h.submit(req)
    h.wait_final([r.request_id for r in requests])
    finals = [h.final(r.request_id) for r in requests]
    assert max(f.num_evictions for f in finals if f is not None) > 0
    for req in requests:
        assert h.tokens(req.request_id) == expected_tokens(req)
    h.wait_idle_stats()
    assert sum(s.stats.recomputed_tokens for s in h.stats) > 0
    generated = sum(s.stats.generation_tokens for s in h.stats)
    assert generated == sum(len(expected_tokens(r)) for r in requests)  # streamed tokens


@pytest.mark.parametrize("preemption", ["resume", "restart"])
def test_a_resubmitted_request_continues_after_the_tokens_it_came_with(
    harness_factory: Any, preemption: str
) -> None:
    """A failover resubmission: prompt + k streamed tokens prefilled here, then token k + 1."""
    h = harness_factory(kv_tokens=2000, preemption=preemption)
    requests = [request("n", 300), request("x", 40, ignore_eos=True)]
    for req in requests:
        k = len(expected_tokens(req)) // 2
        h.submit(replace(req, output_token_ids=tuple(expected_tokens(req)[:k]), recompute=True))
    h.wait_final([r.request_id for r in requests])
    for req in requests:
        want = expected_tokens(req)
        k = len(want) // 2
        final = h.final(req.request_id)
        assert final is not None and final.error is None
        assert h.tokens(req.request_id) == want[k:]
        assert final.num_output_tokens == len(want)
    h.wait_idle_stats()
    stats = [s.stats for s in h.stats]
    assert sum(s.prompt_tokens for s in stats) == 0
    recomputed = sum(len(PROMPT) + len(expected_tokens(r)) // 2 for r in requests)
    assert sum(s.recomputed_tokens for s in stats) == recomputed


def test_requests_that_cannot_fit_end_with_an_error_and_a_reason(harness_factory: Any) -> None:
    h = harness_factory(kv_tokens=100, max_model_len=4096)
    h.submit(request("big", max_tokens=200))
    h.submit(request("long", max_tokens=5000))
    h.submit(request("fits", max_tokens=50))
    h.wait_final(["big", "long", "fits"])
    big, long, fits = (h.final(r) for r in ("big", "long", "fits"))
    assert big is not None and big.finish_reason == "error"
    assert big.error is not None and "KV capacity" in big.error
    assert long is not None and long.error is not None and "max_model_len" in long.error
    assert fits is not None and fits.finish_reason in ("stop", "length")


def test_cancel_frees_the_request_within_one_iteration(harness_factory: Any) -> None:
    h = harness_factory(kv_tokens=20_000, cost_model="unit", speedup=100.0)  # 10 ms/iteration
    h.submit(request("slow", max_tokens=5000, ignore_eos=True))
    while "slow" not in h.events:  # it is running
        h.pump()
    h.inbound.put(ipc.Cancel("slow"))
    h.wait_final(["slow"])
    final = h.final("slow")
    assert final is not None and final.finish_reason == "abort"
    assert final.num_output_tokens < 5000
    assert h.wait_idle_stats().stats.kv_tokens == 0
    assert not h.worker.loop.has_work


def test_worker_main_reports_a_failure_and_exits_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's Ctrl-C handler
    outbox = Outbox()
    fields: dict[str, Any] = {"predictor": "none", "policy": "no-such-policy"}
    settings = Settings(**fields)
    with pytest.raises(ValueError, match="no-such-policy"):
        worker_main(settings, 3, queue.Queue(), outbox)
    failed = outbox.messages.get_nowait()
    assert isinstance(failed, ipc.WorkerFailed) and failed.worker_id == 3
    assert "no-such-policy" in failed.error and "Traceback" in failed.traceback


@pytest.mark.parametrize("budget", [None, 8])
def test_chunked_prefill_setting_splits_the_prompt_over_iterations(
    harness_factory: Any, budget: int | None
) -> None:
    h = harness_factory(kv_tokens=20_000, max_num_batched_tokens=budget)
    req = GenerationRequest("c", tuple(range(5, 45)), max_tokens=20, lo=20, hi=20, ignore_eos=True)
    h.submit(req)
    h.wait_final(["c"])
    assert h.tokens("c") == expected_tokens(req)
    idle = h.wait_idle_stats()
    num_iterations = sum(s.stats.iterations for s in h.stats)
    num_prefill_iterations = 1 if budget is None else 40 // budget  # the last chunk emits a token
    assert num_iterations == num_prefill_iterations + 20 - 1
    assert sum(s.stats.prompt_tokens for s in h.stats) == 40 and idle.stats.kv_tokens == 0


def test_host_overhead_counts_back_to_back_iteration_gaps_beyond_engine_time(
    harness_factory: Any, tmp_path: Any
) -> None:
    zero = tmp_path / "zero.toml"  # the engine takes no time: every gap is host time
    zero.write_text(
        'name = "zero"\nkv_capacity_tokens = 100000\nbase_ms = 0.0\nprefill_ms_per_token = 0.0\n'
        "decode_ms_per_request = 0.0\nkv_ms_per_token = 0.0\n"
    )
    h = harness_factory(cost_model=str(zero))
    started = time.perf_counter()
    h.submit(request("z", max_tokens=300, ignore_eos=True))
    h.wait_final(["z"])
    h.wait_idle_stats()
    wall_s = time.perf_counter() - started
    overhead_s = sum(s.stats.host_overhead_s for s in h.stats)
    num_iterations = sum(s.stats.iterations for s in h.stats)
    assert num_iterations == 300
    assert 0.0 < overhead_s < wall_s  # 299 gaps between 300 back-to-back iterations


def test_host_overhead_counts_net_lateness_not_jitter() -> None:
    clock = HostOverhead()
    assert clock.before_step(10.0) == 0.0  # a busy period starts
    clock.after_step(1.0)
    assert clock.before_step(11.3) == pytest.approx(0.3)  # started 0.3 late
    clock.after_step(1.0)
    assert clock.before_step(12.1) == 0.0  # caught up (pacing): nothing more is lost
    clock.after_step(1.0)
    assert clock.before_step(13.5) == pytest.approx(0.2)  # net 0.5 late: 0.2 beyond the mark
    clock.idle()
    assert clock.before_step(100.0) == 0.0  # idle time is not overhead
