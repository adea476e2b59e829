"""A real `kvsched serve` process for the tests that talk to one over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(args: list[str], *, start_timeout_s: float = 90.0) -> Iterator[str]:
    """`kvsched serve ARGS --port P` from the repository root until /ready; yields its URL and
    on exit sends SIGTERM and checks that the server exits 0."""
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "kvsched serve exited during start-up"
            time.sleep(0.3)
        else:
            pytest.fail(f"kvsched serve not ready within {start_timeout_s:g} s")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
