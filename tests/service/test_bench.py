"""`kvsched bench` against a real HTTP server (uvicorn in a thread serving the fake backend)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.cli import main
from service.commands.bench import Slo, parse_goodput, summarize
from service.commands.loadgen import RequestResult, build_requests
from simulator.traces import load_trace
from tests.service.fakes import MODEL, FakeBackend, make_app

TRACE = Path(__file__).parents[2] / "data" / "examples" / "conv_head.jsonl"


@pytest.fixture
def server() -> Iterator[tuple[str, FakeBackend]]:
    app, backend = make_app(FakeBackend(delay_s=0.0005))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", backend
    uv.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_replays_trace_and_reports(
    server: tuple[str, FakeBackend],
    endpoint: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, backend = server
    out = tmp_path / "bench.json"
    args = ["bench", "--url", url, "--trace", str(TRACE), "--limit", "10", "--rate-scale", "50"]
    args += ["--endpoint", endpoint, "--json", str(out), "--goodput", "ttft:10000,e2e:60000"]
    assert main(args) == 0
    trace = load_trace(TRACE)
    doc = json.loads(out.read_text())
    assert doc["model"] == MODEL  # discovered from /v1/models
    assert doc["completed"] == 10 and doc["failed"] == 0 and doc["num_prompts"] == 10
    assert doc["output_lens"] == trace.output_tokens[:10].tolist() == doc["expected_output_lens"]
    assert doc["total_output_tokens"] == int(trace.output_tokens[:10].sum())
    assert doc["goodput_fraction"] == 1.0 and doc["request_goodput"] > 0
    for key in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < doc[f"median_{key}_ms"] <= doc[f"p99_{key}_ms"]
    assert doc["mean_ttft_ms"] < doc["mean_e2el_ms"]
    assert sum(len(gaps) for gaps in doc["itls"]) == doc["total_output_tokens"] - 10
    assert doc["errors"] == [""] * 10
    sent = backend.requests  # FakeTokenizer: one token per word, as the synthetic prompts assume
    template = 2 if endpoint == "chat" else 0  # chat_prompt adds "<|user|>", "<|assistant|>"
    lengths = sorted(len(r.prompt_token_ids) - template for r in sent)
    assert lengths == sorted(trace.prompt_tokens[:10])
    assert all(r.ignore_eos for r in sent)
    assert sorted(r.max_tokens for r in sent) == sorted(trace.output_tokens[:10])
    report = capsys.readouterr().out
    assert "Successful requests:" in report and "P99 TTFT (ms):" in report
    assert "Request goodput (req/s):" in report


def test_unreachable_server_counts_failures_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "bench.json"
    args = ["bench", "--url", url, "--trace", str(TRACE), "--limit", "4", "--rate-scale", "1000"]
    assert main([*args, "--model", "m", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "4 of 4 requests failed" in captured.err and "ConnectError" in captured.err
    assert "Traceback" not in captured.err + captured.out
    doc = json.loads(out.read_text())
    assert doc["completed"] == 0 and doc["failed"] == 4 and doc["request_throughput"] == 0
    assert main(args) == 2  # no --model: /v1/models is needed and unreachable
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: cannot list models") and "Traceback" not in err


def test_goodput_parsing_and_slo_checks() -> None:
    slo = parse_goodput("ttft:100, tpot:10")
    assert slo == Slo(ttft_ms=100.0, tpot_ms=10.0)
    fast = RequestResult(0, 5, 3, output_tokens=3, ttft_s=0.05, e2e_s=0.06)
    slow_tpot = RequestResult(1, 5, 3, output_tokens=3, ttft_s=0.05, e2e_s=0.2)
    failed = RequestResult(2, 5, 3, error="HTTP 500")
    summary = summarize([fast, slow_tpot, failed], 2.0, slo)
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["goodput_fraction"] == pytest.approx(1 / 3)
    assert summary["request_goodput"] == pytest.approx(0.5)
    for bad in ("ttft", "ttft:x", "foo:3", "e2e:-1"):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_synthetic_prompts_have_the_trace_lengths_in_words() -> None:
    requests = build_requests(load_trace(TRACE), seed=3)
    assert [len(r.prompt.split()) for r in requests] == load_trace(TRACE).prompt_tokens.tolist()
    assert requests[0].send_s == 0.0 and requests == build_requests(load_trace(TRACE), seed=3)
