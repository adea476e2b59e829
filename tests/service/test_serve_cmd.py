"""`kvsched serve`: settings from env + flags, one-line errors, and SIGTERM draining to exit 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from service.cli import build_parser, main
from service.commands.serve import build_settings
from tests.service.live_server import ROOT, free_port


def test_flags_override_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSCHED_WORKERS", "3")
    monkeypatch.setenv("KVSCHED_POLICY", "vllm")
    settings = build_settings(
        build_parser().parse_args(
            [
                "serve",
                "--workers",
                "2",
                "--api-key",
                "a",
                "--api-key",
                "b",
                "--policy-param",
                "alpha=0.25",
                "--policy-param",
                "mode=x",
            ]
        )
    )
    assert settings.workers == 2 and settings.policy == "vllm"  # flag wins; env fills the rest
    assert settings.api_keys == ("a", "b")
    assert settings.policy_params == {"alpha": 0.25, "mode": "x"}
    assert settings.preemption == "resume" and settings.max_resubmits == 3  # the defaults


def test_preemption_and_failover_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSCHED_MAX_RESUBMITS", "7")
    args = build_parser().parse_args(["serve", "--preemption", "restart"])
    settings = build_settings(args)
    assert settings.preemption == "restart" and settings.max_resubmits == 7
    args = build_parser().parse_args(["serve", "--max-resubmits", "0"])
    assert build_settings(args).max_resubmits == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "invalid settings: port: Input should be less than or equal to"),
        (["--engine", "hf"], "engine 'hf' needs --model"),
        (["--shutdown-grace-s", "-1"], "shutdown-grace-s: Input should be greater than"),
        (["--policy-param", "novalue"], "--policy-param expects KEY=VALUE"),
        (["--max-resubmits", "-1"], "max-resubmits: Input should be greater than or equal to 0"),
    ],
)
def test_bad_settings_end_with_one_error_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_sigterm_finishes_the_in_flight_stream_then_exits_0() -> None:
    port = free_port()
    argv = ["serve", "--port", str(port), "--predictor", "none", "--cost-model", "unit"]
    argv += ["--speedup", "20", "--shutdown-grace-s", "20", "--log-level", "warning"]
    server = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": "kvsched-sim", "prompt": "hi there", "max_tokens": 30, "stream": True}
        body["ignore_eos"] = True  # else the sim draws a (random) natural length below 30
        chunks = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line.removeprefix("data: ")))
                    if len(chunks) == 1:
                        server.send_signal(signal.SIGTERM)  # 50 ms per token: ~1.5 s left
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
        server.wait()
    assert len(chunks) == 30 and chunks[-1]["choices"][0]["finish_reason"] == "length"
