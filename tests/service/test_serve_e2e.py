"""`kvsched serve --engine sim` as a real subprocess, driven by the official `openai` SDK.

One server per module (sim engine at 50x, the shipped default predictor): whole and streamed
completions, the model list, OpenAI error bodies over raw HTTP, the completion log, and SIGTERM
ending with exit status 0 within the grace period.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.service.live_server import ROOT, free_port

MODEL = "kvsched-sim"
GRACE_S = 5


@dataclass(frozen=True, slots=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "kvsched serve exited during start-up"
        try:
            if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{server.url}/ready not 200 within {timeout_s} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "completions.jsonl"
    argv = ["serve", "--engine", "sim", "--speedup", "50", "--port", str(port)]
    argv += ["--predictor", "default", "--shutdown-grace-s", str(GRACE_S)]
    argv += ["--completion-log", str(log), "--log-level", "warning"]
    process = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], cwd=ROOT)
    running = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(running, timeout_s=60)
        yield running
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]


def test_whole_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Say hello.", max_tokens=12)
    choice = completion.choices[0]
    assert completion.model == MODEL and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 12
    if choice.finish_reason == "length":
        assert completion.usage.completion_tokens == 12


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=16,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert "".join(deltas).strip()
    assert reasons[-1] in ("stop", "length") and not any(reasons[:-1])
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 16


def _assert_error_object(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return dict(error)


def test_bad_request_is_an_openai_error_object(server: Server) -> None:
    url = f"{server.url}/v1/completions"
    body = {"model": MODEL, "prompt": "hi", "max_tokens": "ten"}
    error = _assert_error_object(httpx.post(url, json=body, timeout=10), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
    broken = httpx.post(url, content=b"{not json", timeout=10)
    _assert_error_object(broken, 400)


def test_unknown_model_is_404(server: Server) -> None:
    body = {"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
    assert _assert_error_object(response, 404)["code"] == "model_not_found"


def _log_rows(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_zz_sigterm_exits_0_and_leaves_the_completion_log(server: Server) -> None:
    """Runs last in this module (tests run in file order): it stops the shared server."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    num_before = len(_log_rows(server.log))  # one per generation test that ran before
    client.completions.create(model=MODEL, prompt="one more", max_tokens=4)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=GRACE_S + 10) == 0
    rows = _log_rows(server.log)
    assert len(rows) == num_before + 1 and rows[-1]["prompt"] == "one more"
    assert {row["model"] for row in rows} == {MODEL}
    for row in rows:
        assert row["finish_reason"] in ("stop", "length")
        assert isinstance(row["lo"], int) and isinstance(row["hi"], int)
        assert (
            isinstance(row["max_tokens"], int) and 1 <= row["lo"] <= row["hi"] <= row["max_tokens"]
        )
