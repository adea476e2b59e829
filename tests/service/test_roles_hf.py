"""Prefill/decode worker roles on the hf engine with a real KV hand-over (issue 15): a prefill
worker's cache (tensors, not a recomputation) moves to a decode worker, which continues from it;
the tokens equal a mixed worker's (tiny random Llama, greedy); the decode worker prefills none
of those prompts; SIGKILL of the prefill or the decode worker loses no request.

Every wait is bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from service.engines.hf import HFEngine  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.pool.pool import WorkerPool  # noqa: E402
from service.protocol import GenerationRequest, TokenEvent, WorkerStats  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker.engine_host import build_loop, waiting_request  # noqa: E402
from service.worker.ipc import KVHandover  # noqa: E402
from tests.service.pool_support import check_streams, collect, eventually, run  # noqa: E402
from tests.service.tiny_llama import build_model, random_requests, undisturbed_tokens  # noqa: E402

NUM_REQUESTS = 40


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-handover")
    build_model(path)
    return path


def hf_settings(path: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"engine": "hf", "model": str(path), "predictor": "none"}
    fields.update({"policy": "fcfs", "kv_tokens": 4000, "max_batch_size": 50, **overrides})
    return Settings(**fields)


def make_requests(n: int = NUM_REQUESTS) -> list[GenerationRequest]:
    """Distinct prompts (BOS + 3..11 words of the tiny vocabulary), 6..20 output tokens each."""
    return random_requests(n, seed=11, prefix="k", max_extra_words=9, min_tokens=6, spread=15)


mixed_tokens = undisturbed_tokens  # greedy tokens of every request on one mixed engine


# --- the engines, in process ---------------------------------------------------------------


def prefill_and_export(
    engine: HFEngine, settings: Settings, requests: list[GenerationRequest]
) -> dict[str, tuple[int, KVHandover]]:
    """Run `requests` to their first token on a prefill-only loop; each one's token and KV."""
    loop, executor = build_loop(settings, engine, prefill_only=True)
    for i, r in enumerate(requests):
        engine.add(i, r)
        loop.add_request(waiting_request(r, i, prefill_only=True))
    out: dict[str, tuple[int, KVHandover]] = {}
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id in outcome.finished:
            assert loop_id in executor.handed_over
            kv = engine.export_kv(loop_id)
            assert kv is not None
            out[requests[loop_id].request_id] = (outcome.tokens[loop_id], kv)
            engine.release(loop_id, forget=True)
    return out


@pytest.mark.parametrize("chunk_tokens", [None, 3])
def test_decode_engine_continues_from_the_handed_over_kv_with_the_mixed_tokens(
    model_path: Path, chunk_tokens: int | None
) -> None:
    cfg = hf_settings(model_path)
    requests = make_requests(12)
    expected = mixed_tokens(cfg, requests)
    handed = prefill_and_export(HFEngine(cfg, 0, device="cpu"), cfg, requests)
    decode = HFEngine(cfg, 1, device="cpu")
    loop, _ = build_loop(cfg, decode)
    loop.max_num_batched_tokens = chunk_tokens
    got: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        first, kv = handed[r.request_id]
        assert first == expected[r.request_id][0]
        # the KV of the prompt, the first token's own KV comes from the decode step
        assert kv.num_tokens == len(r.prompt_token_ids)
        assert kv.nbytes == 2 * 2 * 2 * kv.num_tokens * 16 * 4  # layers*(k,v)*heads*tok*dim*fp32
        kv = pickle.loads(pickle.dumps(kv))  # what the pipes do to it
        moved = GenerationRequest(**{**_fields(r), "output_token_ids": (first,)})
        decode.add(i, moved)
        decode.import_kv(i, kv)
        loop.add_request(waiting_request(moved, i))
        got[r.request_id] = [first]
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id, token in outcome.tokens.items():
            got[requests[loop_id].request_id].append(token)
        for loop_id in outcome.finished:
            decode.release(loop_id, forget=True)
    assert got == expected
    assert decode.prefill_tokens_computed == 0  # no prompt token was run through the model


def test_an_import_that_does_not_fit_the_request_is_refused(model_path: Path) -> None:
    cfg = hf_settings(model_path)
    r = make_requests(2)[1]
    handed = prefill_and_export(HFEngine(cfg, 0, device="cpu"), cfg, [r])
    first, kv = handed[r.request_id]
    decode = HFEngine(cfg, 1, device="cpu")
    moved = GenerationRequest(**{**_fields(r), "output_token_ids": (first, first)})
    decode.add(0, moved)
    with pytest.raises(ValueError, match="KV cache of"):
        decode.import_kv(0, kv)


def test_an_evicted_handover_is_prefilled_again_with_the_same_tokens(model_path: Path) -> None:
    # a decode engine whose loop evicts: the imported cache is dropped and re-prefilled
    cfg = hf_settings(model_path, kv_tokens=60, policy="vllm", preemption="resume")
    requests = make_requests(6)
    expected = mixed_tokens(cfg, requests)
    handed = prefill_and_export(HFEngine(cfg, 0, device="cpu"), cfg, requests)
    decode = HFEngine(cfg, 1, device="cpu")
    loop, _ = build_loop(cfg, decode)
    got: dict[str, list[int]] = {}
    num_evicted = 0
    for i, r in enumerate(requests):
        first, kv = handed[r.request_id]
        moved = GenerationRequest(**{**_fields(r), "output_token_ids": (first,)})
        decode.add(i, moved)
        decode.import_kv(i, kv)
        loop.add_request(waiting_request(moved, i))
        got[r.request_id] = [first]
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id in outcome.evicted:
            num_evicted += 1
            if loop_id not in loop.running:
                decode.release(loop_id, forget=False)
        for loop_id, token in outcome.tokens.items():
            got[requests[loop_id].request_id].append(token)
        for loop_id in outcome.finished:
            decode.release(loop_id, forget=True)
    assert num_evicted > 0
    assert decode.prefill_tokens_computed > 0  # the evicted ones were prefilled here
    assert got == expected


def _fields(r: GenerationRequest) -> dict[str, Any]:
    return {name: getattr(r, name) for name in GenerationRequest.__dataclass_fields__}


# --- spawned workers ------------------------------------------------------------------------


class Recorder(Metrics):
    """The app's real metrics, keeping every worker report as well."""

    def __init__(self) -> None:
        super().__init__("handover-test")
        self.reports: list[WorkerStats] = []

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        super().observe_worker(stats, policy)
        self.reports.append(stats)


def serve(
    pool: WorkerPool, requests: list[GenerationRequest], victim: str | None, timeout_s: float
) -> tuple[dict[str, list[TokenEvent]], int]:
    """Send `requests`; with `victim` ("prefill"/"decode"), SIGKILL that worker once an eighth
    of the requests streamed a token, while it holds some. Each request's events, and how many
    requests the victim held."""
    streamed: dict[str, int] = {}
    held = 0

    async def scenario(pool: WorkerPool) -> dict[str, list[TokenEvent]]:
        nonlocal held
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in requests]
        if victim is not None:
            slot = 0 if victim == "prefill" else 1
            target = pool._slots[slot]

            def ready_to_kill() -> bool:
                return len(streamed) >= len(requests) // 8 and target.num_assigned > 0

            await eventually(ready_to_kill, timeout_s)
            held = target.num_assigned
            os.kill(pool.describe()["workers"][slot]["pid"], signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        if victim is not None:
            await eventually(pool.is_ready, timeout_s)
        return {r.request_id: events for r, events in zip(requests, outcomes, strict=True)}

    events: dict[str, list[TokenEvent]] = run(scenario, pool)
    return events, held


@pytest.mark.parametrize("victim", [None, "prefill", "decode"])
def test_prefill_decode_workers_hand_the_kv_over_and_survive_a_sigkill(
    model_path: Path, victim: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned workers share two cores
    # the prefill worker takes 4 prompts an iteration, so it holds requests for a while
    settings = hf_settings(
        model_path, workers=2, prefill_workers=1, prefill_max_batch_size=4,
        worker_stall_timeout_s=60.0,
    )  # fmt: skip
    requests = make_requests()
    expected = mixed_tokens(settings, requests)
    assert len({tuple(t) for t in expected.values()}) > NUM_REQUESTS // 2  # prompts matter
    metrics = Recorder()
    events, held = serve(WorkerPool(settings, metrics=metrics), requests, victim, timeout_s=90)
    check_streams(events, requests, expected)
    decode_reports = [s for s in metrics.reports if s.worker_id == 1]
    handover_tokens = sum(s.handover_tokens for s in decode_reports)
    received = sum(len(s.handover_s) for s in decode_reports)
    handover_bytes = sum(s.handover_bytes for s in decode_reports)
    per_token = 2 * 2 * 2 * 16 * 4  # layers * (keys, values) * heads * head_dim * fp32
    # every KV that arrived: the prompt's, prompt + 1 tokens resumed at output position 1
    assert handover_bytes == per_token * (handover_tokens - received)
    rendered = metrics.render().decode()
    if victim != "decode":  # (a killed decode worker may take every KV it got with it)
        assert received > 0
        line = 'kvsched:kv_handover_bytes_total{model_name="handover-test",worker="1"}'
        assert line in rendered and "kvsched:kv_handover_seconds_bucket" in rendered
    if victim is None:
        # every request's KV moved, and the decode worker prefilled none of the prompts
        assert received == NUM_REQUESTS
        assert handover_tokens == sum(len(r.prompt_token_ids) + 1 for r in requests)
        assert sum(s.prompt_tokens for s in decode_reports) == 0
        assert sum(s.recomputed_tokens for s in decode_reports) == 0
        assert sum(s.prompt_tokens for s in metrics.reports if s.worker_id == 0) == sum(
            len(r.prompt_token_ids) for r in requests
        )
    else:
        assert held > 0
        resubmitted = [line for line in rendered.splitlines() if line.startswith(
            "kvsched:request_resubmissions_total")]  # fmt: skip
        assert resubmitted and float(resubmitted[0].split()[-1]) > 0
        if victim == "decode":  # its requests resumed from their streamed tokens, recomputed
            assert sum(s.recomputed_tokens for s in decode_reports) > 0
