"""Online recalibration in the serving path (issue 13): finished requests move the calibrator,
later intervals follow, /metrics shows it, the state survives a restart.

In-process tests use the fake backend (every request generates `num_tokens`); the last test runs
`kvsched serve --engine sim` as a subprocess with output lengths far above what the shipped
model predicts, and reads the adaptation off /metrics and the completion log.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.fakes import MODEL, FakeBackend, FakePredictor, make_app, serve
from tests.service.live_server import ROOT, free_port
from tests.service.test_serve_e2e import Server, _wait_ready

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _gauge(text: str, name: str, side: str) -> float | None:
    pattern = rf'^kvsched:{name}{{model_name="[^"]*",side="{side}"}} (\S+)$'
    found = re.search(pattern, text, flags=re.M)
    return None if found is None else float(found.group(1))


async def _complete(client: httpx.AsyncClient, n: int, **extra: object) -> None:
    for i in range(n):
        body = {"model": MODEL, "prompt": f"say words {i % 3}", "max_tokens": 64, **extra}
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text


async def test_too_short_intervals_widen_and_metrics_follow() -> None:
    backend = FakeBackend(num_tokens=40, delay_s=0.0)
    app, backend = make_app(backend, predictor=FakePredictor(2, 4))
    async with serve(app) as client:
        await _complete(client, 60)
        metrics = (await client.get("/metrics")).text
    intervals = [(r.lo, r.hi) for r in backend.requests]
    assert intervals[0] == (2, 4)  # nothing learned yet: the model's own interval
    his = [hi for _, hi in intervals]
    assert max(his[-10:]) >= 40  # widened until the 40-token answers fit
    offset_hi = _gauge(metrics, "interval_online_offset", "hi")
    coverage_hi = _gauge(metrics, "interval_online_coverage", "hi")
    assert offset_hi is not None and offset_hi > 2.0  # log1p(40) - log1p(4) = 2.1
    assert coverage_hi is not None and coverage_hi < 0.9  # the early misses are in the window
    assert 'kvsched:interval_online_observations_total{censored="false",model_name="' in metrics
    # the lower side never missed (40 >= lo): it narrowed instead (lo moved up)
    offset_lo = _gauge(metrics, "interval_online_offset", "lo")
    assert offset_lo is not None and offset_lo < 0.0
    assert _gauge(metrics, "interval_online_coverage", "lo") == 1.0


async def test_length_finishes_prove_misses_above_hi_but_never_below_lo() -> None:
    backend = FakeBackend(num_tokens=100, delay_s=0.0)  # every request runs into max_tokens
    app, backend = make_app(backend, predictor=FakePredictor(30, 40))
    async with serve(app) as client:
        await _complete(client, 40)
        metrics = (await client.get("/metrics")).text
    gateway = app.state.gateway
    calibrator = gateway.online.online.calibrator
    assert calibrator.censored == 40 and calibrator.lo.misses == 0
    assert calibrator.hi.misses > 0  # hi 40 < max_tokens 64 reached: proven misses
    assert backend.requests[-1].hi == 64  # then hi reached the cap, where it is covered
    assert 'censored="true"' in metrics


async def test_disabled_or_hinted_requests_leave_the_intervals_alone() -> None:
    backend = FakeBackend(num_tokens=40, delay_s=0.0)
    app, backend = make_app(backend, predictor=FakePredictor(2, 4), online_calibration=False)
    async with serve(app) as client:
        await _complete(client, 20)
        metrics = (await client.get("/metrics")).text
    assert {(r.lo, r.hi) for r in backend.requests} == {(2, 4)}
    assert _gauge(metrics, "interval_online_offset", "hi") is None
    backend = FakeBackend(num_tokens=40, delay_s=0.0)
    app, backend = make_app(backend, predictor=FakePredictor(2, 4))
    async with serve(app) as client:  # a length_hint changes the interval: not fed
        await _complete(client, 20, length_hint=30)
        metrics = (await client.get("/metrics")).text
    assert app.state.gateway.online.online.calibrator.num_observed == 0
    assert _gauge(metrics, "interval_online_offset", "hi") == 0.0


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "calibration.json"
    backend = FakeBackend(num_tokens=40, delay_s=0.0)
    app, backend = make_app(backend, predictor=FakePredictor(2, 4), online_calibration_state=state)
    async with serve(app) as client:
        await _complete(client, 30)
    saved = json.loads(state.read_text())
    assert saved["hi"]["delta"] > 1.0 and saved["fingerprint"] == "FakePredictor"
    backend2 = FakeBackend(num_tokens=40, delay_s=0.0)
    app2, backend2 = make_app(
        backend2, predictor=FakePredictor(2, 4), online_calibration_state=state
    )
    async with serve(app2) as client:
        await _complete(client, 1)
    assert backend2.requests[0].hi > 4  # starts where the last run stopped


def test_a_state_file_of_another_kind_stops_the_start(tmp_path: Path) -> None:
    state = tmp_path / "calibration.json"
    state.write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="calibration.json"):
        make_app(predictor=FakePredictor(2, 4), online_calibration_state=state)


async def test_a_state_of_another_model_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "calibration.json"
    app, _ = make_app(
        FakeBackend(num_tokens=40, delay_s=0.0),
        predictor=FakePredictor(2, 4),
        online_calibration_state=state,
    )
    async with serve(app) as client:
        await _complete(client, 5)
    data = json.loads(state.read_text())
    state.write_text(json.dumps({**data, "fingerprint": "sha256:other"}))
    app, backend = make_app(
        FakeBackend(num_tokens=40, delay_s=0.0),
        predictor=FakePredictor(2, 4),
        online_calibration_state=state,
    )
    assert "starts afresh" in caplog.text
    async with serve(app) as client:
        await _complete(client, 1)
    assert (backend.requests[0].lo, backend.requests[0].hi) == (2, 4)


def test_serve_with_the_sim_engine_adapts_to_longer_outputs(tmp_path: Path) -> None:
    """The shipped model on one short prompt; the sim engine answers with 1,500-1,900 tokens."""
    lengths = tmp_path / "lengths.jsonl"
    rows = ({"arrival_s": i, "prompt_tokens": 5, "output_tokens": 1500 + i} for i in range(400))
    lengths.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log, state, port = tmp_path / "log.jsonl", tmp_path / "state.json", free_port()
    argv = ["serve", "--engine", "sim", "--speedup", "200", "--port", str(port)]
    argv += ["--predictor", "default", "--sim-output-lengths", str(lengths)]
    argv += ["--completion-log", str(log), "--online-calibration-state", str(state)]
    argv += ["--log-level", "warning", "--shutdown-grace-s", "5"]
    process = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], cwd=ROOT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server, timeout_s=60)
        before = httpx.get(f"{server.url}/metrics", timeout=10).text
        asyncio.run(_drive(server.url, 96, concurrency=8))
        after = httpx.get(f"{server.url}/metrics", timeout=10).text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    assert _gauge(before, "interval_online_offset", "hi") == 0.0
    assert _gauge(before, "interval_online_coverage", "hi") is None  # nothing finished yet
    offset_hi = _gauge(after, "interval_online_offset", "hi")
    assert offset_hi is not None and offset_hi > 0.5
    coverage_hi = _gauge(after, "interval_online_coverage", "hi")
    assert coverage_hi is not None and coverage_hi < 1.0
    finished = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(finished) == 96
    first, last = finished[0], finished[-8:]
    assert first["hi"] < 1500  # the shipped model expects far shorter answers
    assert all(row["hi"] >= 1500 for row in last)  # the same prompt, now covered
    assert json.loads(state.read_text())["hi"]["delta"] == pytest.approx(offset_hi)


async def _drive(url: str, n: int, *, concurrency: int) -> None:
    body = {"model": "kvsched-sim", "prompt": "Write a haiku about rain.", "max_tokens": 2000}
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one() -> None:
            async with limit:
                response = await client.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one() for _ in range(n)))
