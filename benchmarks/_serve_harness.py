"""Helpers for the serving benchmarks: run `kvsched serve` as a subprocess, a raw HTTP client.

`running_server` starts the real CLI on a free port, waits for GET /ready and stops it with
SIGTERM. `RawClient` speaks minimal HTTP/1.1 over asyncio streams (keep-alive, Content-Length
and chunked bodies): much cheaper per request than httpx, so on a 2-core machine the load
generator takes less CPU away from the server it measures. `/proc` gives RSS and CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Server:
    """A running `kvsched serve`: its URL, port and process id."""

    url: str
    port: int
    pid: int


@contextlib.contextmanager
def running_server(
    flags: list[str], ready_timeout_s: float = 90.0, cpus: set[int] | None = None
) -> Iterator[Server]:
    """`kvsched serve FLAGS` on a free port; yields once /ready answers 200; SIGTERM on exit.
    `cpus`: pin the server (and the workers it spawns, which inherit it) to these cores."""
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *flags]
    command += ["--log-level", "warning"]
    with tempfile.TemporaryFile() as log:
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, preexec_fn=pin)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, ready_timeout_s, log)
            yield Server(url, port, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: IO[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read().decode()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not ready after {timeout_s} s")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/*/stat parent ids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        tree += children
        frontier = children
    return tree


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return 0.0


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STALE_S = 3.0  # uvicorn closes keep-alive connections idle for 5 s; never reuse one near that


class RawClient:
    """A pool of keep-alive HTTP/1.1 connections to one server; `send` returns (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[Connection, float]] = []
        self.num_retries = 0

    async def send(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        conn, reused = await self._take()
        try:
            return await self._exchange(conn, head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            conn[1].close()
            if not reused:
                raise
        self.num_retries += 1  # the server closed a kept-alive connection: once more, fresh
        return await self._exchange(await self._connect(), head + body)

    async def _exchange(self, conn: Connection, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(request)
        status, content, keep = await _read_response(reader)
        if keep:
            self._idle.append((conn, time.monotonic()))
        else:
            writer.close()
        return status, content

    async def _take(self) -> tuple[Connection, bool]:
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < STALE_S:
                return conn, True
            conn[1].close()
        return await self._connect(), False

    async def _connect(self) -> Connection:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    def close(self) -> None:
        for (_, writer), _ in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    keep = headers.get("connection", "").lower() != "close"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, b"".join(parts), keep
            parts.append((await reader.readexactly(size + 2))[:-2])
    length = int(headers.get("content-length", "0"))
    return status, await reader.readexactly(length), keep
