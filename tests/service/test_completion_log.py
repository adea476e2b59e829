"""The completion log: one canonical JSONL line per finished request, loadable and trainable.

Served in-process with FakeBackend (5 tokens unless max_tokens is smaller); the log must load with
`predictors.datasets.load_samples` and be accepted by `kvsched predictor train`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from predictors.datasets import load_samples
from predictors.default import load_predictor
from service.cli import main
from service.gateway.completion_log import CompletionLog
from service.gateway.gateway import Gateway
from tests.service.fakes import MODEL, FakeBackend, FakePredictor, make_app, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _complete(client: httpx.AsyncClient, i: int, max_tokens: int) -> None:
    prompt = f"request {i} " + "word " * (i % 17)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
    if i % 2:  # chat requests are logged too
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        body["max_tokens"] = max_tokens
    path = "/v1/chat/completions" if i % 2 else "/v1/completions"
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text


async def test_five_requests_give_five_loadable_lines(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "completions.jsonl"
    # the predictor's fixed interval (online recalibration off) is what each line must carry
    app, _ = make_app(
        FakeBackend(num_tokens=5), FakePredictor(2, 4), completion_log=log, online_calibration=False
    )
    max_tokens = [2, 3, 8, 9, 10]
    async with serve(app) as client:
        for i, cap in enumerate(max_tokens):
            await _complete(client, i, cap)
        bad = await client.post("/v1/completions", json={"model": MODEL, "prompt": ""})
        assert bad.status_code == 400  # refused requests are not logged
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 5
    assert [r["output_tokens"] for r in rows] == [2, 3, 5, 5, 5]
    assert [r["finish_reason"] for r in rows] == ["length", "length", "stop", "stop", "stop"]
    assert {r["model"] for r in rows} == {MODEL}
    assert [(r["lo"], r["hi"]) for r in rows] == [(2, 2), (2, 3), (2, 4), (2, 4), (2, 4)]
    assert rows[0]["prompt"] == "request 0 " and rows[0]["prompt_tokens"] == 2
    assert all(
        r["ts"] > 1e9 and r["max_tokens"] == c for r, c in zip(rows, max_tokens, strict=True)
    )
    samples = load_samples(log)
    assert len(samples) == 5
    assert samples.output_tokens.tolist() == [2, 3, 5, 5, 5]
    assert samples.prompt_tokens.tolist() == [r["prompt_tokens"] for r in rows]
    assert samples.models == (MODEL,) * 5


async def test_unfinished_requests_are_not_logged(tmp_path: Path) -> None:
    log = tmp_path / "c.jsonl"
    app, _ = make_app(FakeBackend(num_tokens=5, fail_after=2), completion_log=log)
    async with serve(app) as client:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "a b"})
    assert response.status_code == 500
    assert not log.exists()
    gateway: Gateway = app.state.gateway
    assert gateway.completion_log.num_written == 0


async def test_no_log_without_the_setting(tmp_path: Path) -> None:
    app, _ = make_app(FakeBackend(num_tokens=2))
    async with serve(app) as client:
        await _complete(client, 0, 5)
    gateway: Gateway = app.state.gateway
    assert gateway.completion_log.path is None and gateway.completion_log.num_written == 0
    assert list(tmp_path.iterdir()) == []


async def test_an_unwritable_log_does_not_fail_requests(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    app, _ = make_app(FakeBackend(num_tokens=2), completion_log=blocker / "log.jsonl")
    async with serve(app) as client:
        await _complete(client, 0, 5)
        await _complete(client, 1, 5)
    gateway: Gateway = app.state.gateway
    assert gateway.completion_log.num_written == 0


async def test_train_accepts_a_served_log(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    app, _ = make_app(FakeBackend(num_tokens=40, delay_s=0), completion_log=log)
    rng = np.random.default_rng(0)
    caps = rng.integers(1, 80, size=60).tolist()
    async with serve(app) as client:
        await asyncio.gather(*(_complete(client, i, cap) for i, cap in enumerate(caps)))
    assert len(load_samples(log)) == 60
    out = tmp_path / "m.kvp"
    argv = ["predictor", "train", "--data", str(log), "--out", str(out)]
    assert main([*argv, "--d-lo", "0.2", "--d-hi", "0.2"]) == 0
    info = load_predictor(str(out)).info
    assert info.num_train + info.num_cal == 60


async def test_log_lines_are_whole_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "old", "prompt_tokens": 1, "output_tokens": 1}\n')
    log = CompletionLog(path, "m")
    log._write('{"prompt": "new", "prompt_tokens": 1, "output_tokens": 2}\n')
    log.close()
    log._write(
        '{"prompt": "again", "prompt_tokens": 1, "output_tokens": 3}\n'
    )  # reopens after close
    log.close()
    assert load_samples(path).output_tokens.tolist() == [1, 2, 3]
