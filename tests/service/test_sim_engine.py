"""The sim engine: deterministic tokenizer, output lengths, tokens, and cost-model pacing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from service.engines.sim import (
    EOS_TOKEN_ID,
    SimEngine,
    SimTokenizer,
    load_tokenizer,
    output_length,
    placeholder_tokens,
    request_seed,
)
from service.protocol import GenerationRequest
from service.settings import Settings
from service.worker.engine_host import build_loop, waiting_request
from simulator.cost_model import load_cost_model


def make_settings(**overrides: object) -> Settings:
    fields: dict[str, object] = {"predictor": "none", "policy": "fcfs", "speedup": 1e6}
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]


def make_request(
    request_id: str = "r", *, max_tokens: int = 64, ignore_eos: bool = False, min_tokens: int = 0
) -> GenerationRequest:
    return GenerationRequest(
        request_id,
        (5, 6, 7, 8),
        max_tokens=max_tokens,
        lo=1,
        hi=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
    )


def run_to_completion(
    engine: SimEngine, requests: list[GenerationRequest]
) -> dict[str, tuple[list[int], str]]:
    """Drive the engine with a real SchedulingLoop; return (tokens, finish reason) per request."""
    loop, _ = build_loop(make_settings(), engine)
    tokens: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    reasons: dict[int, str] = {}
    for i, request in enumerate(requests):
        engine.add(i, request)
        loop.add_request(waiting_request(request, i))
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id, token_id in outcome.tokens.items():
            tokens[loop_id].append(token_id)
        for loop_id in outcome.finished:
            reasons[loop_id] = outcome.finish_reasons[loop_id]
    return {r.request_id: (tokens[i], reasons[i]) for i, r in enumerate(requests)}


def test_tokenizer_is_deterministic_and_decodes_placeholder_words() -> None:
    tokenizer = load_tokenizer(make_settings())
    ids = tokenizer.encode("Hello, world! Hello")
    assert len(ids) == 5 and ids[0] == ids[4] != ids[2]
    assert ids == SimTokenizer().encode("Hello , world ! Hello")  # whitespace does not matter
    assert tokenizer.encode("   ") == []
    assert tokenizer.eos_token_id == EOS_TOKEN_ID
    text = tokenizer.decode([*ids, EOS_TOKEN_ID])
    assert len(text.split()) == 5 and text.startswith(" ")
    assert "".join(tokenizer.decode([i]) for i in ids) == tokenizer.decode(ids)


def test_ignore_eos_gives_exactly_max_tokens_with_finish_reason_length() -> None:
    engine = SimEngine(make_settings(kv_tokens=4000), 0)
    requests = [make_request(f"r{i}", max_tokens=10 + 7 * i, ignore_eos=True) for i in range(6)]
    done = run_to_completion(engine, requests)
    for request in requests:
        tokens, reason = done[request.request_id]
        assert len(tokens) == request.max_tokens and reason == "length"
        assert EOS_TOKEN_ID not in tokens


def test_natural_lengths_end_with_eos_and_stop() -> None:
    settings = make_settings(kv_tokens=100_000)
    engine = SimEngine(settings, 0)
    requests = [make_request(f"q{i}", max_tokens=4000) for i in range(8)]
    done = run_to_completion(engine, requests)
    for request in requests:
        tokens, reason = done[request.request_id]
        assert len(tokens) == output_length(request, settings.seed)
        assert reason == "stop" and tokens[-1] == EOS_TOKEN_ID
        assert EOS_TOKEN_ID not in tokens[:-1]


def test_lengths_are_deterministic_per_seed_and_bounded() -> None:
    requests = [make_request(f"id-{i}", max_tokens=300, min_tokens=20) for i in range(200)]
    first = [output_length(r, 0) for r in requests]
    assert first == [output_length(r, 0) for r in requests]
    assert first != [output_length(r, 1) for r in requests]
    assert min(first) >= 20 and max(first) <= 300
    assert 300 in first and len(set(first)) > 50  # capped ones, and a real spread below
    median = float(
        np.median([output_length(make_request(f"m{i}", max_tokens=10**6), 7) for i in range(2000)])
    )
    assert 150 < median < 260  # the default log-normal has median ~200


def test_lengths_follow_a_trace_when_given(tmp_path: Path) -> None:
    trace = tmp_path / "lengths.jsonl"
    rows = [
        {"arrival_s": i, "prompt_tokens": 5, "output_tokens": n} for i, n in enumerate((7, 11, 13))
    ]
    trace.write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = SimEngine(make_settings(sim_output_lengths=trace), 0)
    drawn = {output_length(make_request(f"t{i}"), 0, engine.lengths) for i in range(100)}
    assert drawn == {7, 11, 13}


def test_same_request_gets_the_same_tokens_on_any_worker() -> None:
    seeds = np.full(5, request_seed(0, "abc"), dtype=np.int64)
    positions = np.arange(5, dtype=np.int64)
    assert np.array_equal(
        placeholder_tokens(seeds, positions), placeholder_tokens(seeds, positions)
    )
    assert len(set(placeholder_tokens(seeds, positions).tolist())) == 5
    assert request_seed(0, "abc") != request_seed(1, "abc")


def test_pacing_sleeps_the_cost_model_time_divided_by_speedup() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    settings = make_settings(cost_model="llama2-70b-a100x2", speedup=10.0, kv_tokens=4000)
    engine = SimEngine(settings, 0, sleep=sleep, clock=lambda: now[0])
    run_to_completion(engine, [make_request("a", max_tokens=3, ignore_eos=True)])
    cost = load_cost_model("llama2-70b-a100x2")
    expected = [cost.iteration_time_s(4, 0, 5) / 10.0]  # prefill of the 4-token prompt
    expected += [cost.iteration_time_s(0, 1, 4 + g + 1) / 10.0 for g in (1, 2)]
    assert sleeps == pytest.approx(expected)


def test_pacing_absorbs_the_worker_overhead_into_the_sleep() -> None:
    now = [0.0]
    sleeps: list[float] = []
    settings = make_settings(cost_model="unit", speedup=10.0)  # 0.1 s per iteration
    engine = SimEngine(settings, 0, sleep=sleeps.append, clock=lambda: now[0])
    engine._pace(0.1)
    now[0] = 0.13  # the iteration's sleep (0.1) plus 0.03 s of worker overhead
    engine._pace(0.1)
    assert sleeps == pytest.approx([0.1, 0.07])


def test_real_time_pacing_follows_the_unit_cost_model() -> None:
    engine = SimEngine(make_settings(cost_model="unit", speedup=200.0), 0)  # 5 ms per iteration
    started = time.perf_counter()
    run_to_completion(engine, [make_request("a", max_tokens=20, ignore_eos=True)])
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 0.5
