"""Roles inside one worker: a hand-over's KV arrives by transfer (one at a time, before the
decode worker admits it) instead of being prefilled there, and the token sequence continues
where the prefill worker stopped; a prefill worker's executor ends requests at their first token.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any

import numpy as np
import pytest

from service.engines.sim import SimEngine, placeholder_tokens, request_seed
from service.protocol import GenerationRequest, TokenEvent
from service.settings import Settings
from service.worker import ipc
from service.worker.engine_host import build_loop, waiting_request
from service.worker.worker import Worker


class Outbox:
    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()

    def send(self, obj: Any) -> None:
        self.messages.put(obj)


PROMPT = tuple(range(3, 503))  # 500 tokens
TRANSFER_MS = 0.01


def make_settings(**overrides: object) -> Settings:
    fields: dict[str, object] = {
        "predictor": "none",
        "policy": "fcfs",
        "speedup": 1e6,
        "cost_model": "llama3-8b-h100",
        "kv_transfer_ms_per_token": TRANSFER_MS,
    }
    return Settings(**(fields | overrides))  # type: ignore[arg-type]


def fresh(request_id: str = "r") -> GenerationRequest:
    return GenerationRequest(request_id, PROMPT, max_tokens=50, lo=1, hi=50, ignore_eos=True)


def token_at(request_id: str, position: int) -> int:
    seeds = np.array([request_seed(0, request_id)], dtype=np.int64)
    return int(placeholder_tokens(seeds, np.array([position], dtype=np.int64))[0])


def first_step(engine: SimEngine, request: GenerationRequest, *, prefill_only: bool = False) -> Any:
    loop, executor = build_loop(make_settings(), engine, prefill_only=prefill_only)
    engine.add(7, request)
    loop.add_request(waiting_request(request, 7, prefill_only=prefill_only))
    return loop.step(time.time()), executor


def test_a_handed_over_request_costs_its_kv_transfer_and_one_decode_step() -> None:
    engine = SimEngine(make_settings(), 0, sleep=lambda s: None)
    cost, req = engine.cost_model, fresh()
    kv = len(PROMPT) + 1  # prompt + the first token arrive by transfer
    transfer_s = kv * TRANSFER_MS / 1000
    assert engine.handover_delay_s(kv) == pytest.approx(transfer_s / 1e6)  # / speedup
    assert engine.handover_s == pytest.approx(transfer_s)
    handed = dataclasses.replace(req, output_token_ids=(token_at("r", 0),))
    outcome, _ = first_step(engine, handed)
    assert outcome.elapsed_s * 1e6 == pytest.approx(cost.iteration_time_s(0, 1, kv + 1), rel=1e-9)
    assert outcome.tokens == {7: token_at("r", 1)}  # continues at output position 1
    computed = SimEngine(make_settings(), 0, sleep=lambda s: None)
    outcome, _ = first_step(computed, req)
    assert outcome.elapsed_s * 1e6 == pytest.approx(cost.iteration_time_s(500, 0, 501), rel=1e-9)
    assert computed.handover_s == 0.0 and outcome.tokens == {7: token_at("r", 0)}
    assert transfer_s < cost.iteration_time_s(500, 0, 501) - cost.iteration_time_s(0, 1, 502)


def test_an_evicted_hand_over_recomputes_its_kv() -> None:
    engine = SimEngine(make_settings(), 0, sleep=lambda s: None)
    handed = dataclasses.replace(fresh(), output_token_ids=(token_at("r", 0),))
    first_step(engine, handed)
    engine.release(7, forget=False)  # evicted: the transferred KV is gone
    loop, _ = build_loop(make_settings(), engine)
    loop.add_request(waiting_request(handed, 7))
    outcome = loop.step(time.time())
    expected = engine.cost_model.iteration_time_s(501, 0, 502)
    assert outcome.elapsed_s * 1e6 == pytest.approx(expected, rel=1e-9)
    assert outcome.tokens == {7: token_at("r", 1)}


def test_the_prefill_executor_ends_requests_at_their_first_token() -> None:
    engine = SimEngine(make_settings(), 0, sleep=lambda s: None)
    outcome, executor = first_step(engine, fresh(), prefill_only=True)
    assert outcome.finished == (7,) and executor.handed_over == {7}
    one = dataclasses.replace(fresh("one"), max_tokens=1, hi=1)
    outcome, executor = first_step(SimEngine(make_settings(), 0), one, prefill_only=True)
    assert outcome.finished == (7,) and executor.handed_over == frozenset()  # truly done


def test_a_decode_worker_admits_hand_overs_only_once_their_kv_arrived_one_at_a_time() -> None:
    # 0.1 s of (wall) transfer per hand-over of 12 + 1 KV tokens; unit iterations of 10 ms
    per_token_ms = 0.1 / 13 * 1000 * 100
    settings = make_settings(
        workers=2, prefill_workers=1, cost_model="unit", speedup=100.0,
        kv_transfer_ms_per_token=per_token_ms,
    )  # fmt: skip
    inbound: queue.Queue[Any] = queue.Queue()
    outbox = Outbox()
    worker = Worker(settings, 1, inbound, outbox)  # worker 1: a decode worker
    assert worker.role == "decode"
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    submitted_s = time.time()
    for name in ("a", "b", "c"):
        req = GenerationRequest(name, PROMPT[:12], max_tokens=4, lo=1, hi=4, ignore_eos=True)
        inbound.put(ipc.Submit(dataclasses.replace(req, output_token_ids=(token_at(name, 0),))))
    inbound.put(ipc.Cancel("c"))  # still in transit: it ends at once, the others are unaffected
    events: dict[str, list[TokenEvent]] = {"a": [], "b": [], "c": []}
    while not all(e and e[-1].finish_reason for e in events.values()):
        message = outbox.messages.get(timeout=10)
        if isinstance(message, ipc.Events):
            for event in message.events:
                events[event.request_id].append(event)
    inbound.put(ipc.Shutdown())
    thread.join(5)
    assert [(e.finish_reason, e.token_ids) for e in events["c"]] == [("abort", ())]
    for k, name in enumerate(("a", "b")):
        tokens = [t for e in events[name] for t in e.token_ids]
        assert tokens == [token_at(name, p) for p in (1, 2, 3)]  # position 1 onwards
        assert events[name][-1].num_output_tokens == 4
        scheduled = events[name][0].first_scheduled_s
        assert scheduled is not None and scheduled - submitted_s >= 0.1 * (k + 1) - 0.005
