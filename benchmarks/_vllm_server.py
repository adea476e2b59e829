"""One vLLM OpenAI server for `real_engine_policies.py`: vLLM's CPU build serving the tiny model
with its own scheduler (`BASELINE`) or with ours (`--scheduler-cls`, the policy in
KVSCHED_POLICY), in its own process group, its log in a file, and its Prometheus counters."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from _openai_stream import ROOT, free_port

SCHEDULER_CLS = "service.vllm_ext.scheduler.KvschedScheduler"
BASELINE = "vllm-own"  # vLLM's own scheduler: no --scheduler-cls
MODEL_NAME = "tiny"
START_TIMEOUT_S = 300.0


def server_env(policy: str, omp_threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCHED_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # --num-gpu-blocks-override sets the blocks used
        # the model runs in the engine-core process (no separate worker) for every run
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        # torch's intra-op threads: on a shared 2-core machine 2 OpenMP threads stall
        # at every barrier whenever another job holds a core
        OMP_NUM_THREADS=str(omp_threads),
    )
    if policy != BASELINE:
        env["KVSCHED_POLICY"] = policy
    return env


class Server:
    """One vLLM OpenAI server (its own process group) with its log in a file."""

    def __init__(
        self, python: Path, model: Path, policy: str, args: argparse.Namespace, log: Path
    ) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        cmd = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--dtype",
            "bfloat16",
            "--block-size",
            str(args.block_size),
            "--num-gpu-blocks-override",
            str(args.num_blocks),
            "--max-model-len",
            str(args.prompt_tokens[1] + args.output_tokens[1]),
            "--max-num-seqs",
            str(args.max_num_seqs),
            "--max-num-batched-tokens",
            str(args.max_num_batched_tokens),
            "--seed",
            "0",
            "--enforce-eager",
            "--no-enable-prefix-caching",
            "--distributed-executor-backend",
            "uni",
            "--disable-uvicorn-access-log",
        ]
        if policy != BASELINE:
            cmd += ["--scheduler-cls", SCHEDULER_CLS]
        self.log_path = log
        self._log = log.open("w")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=server_env(policy, args.omp_threads),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - started < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"vLLM server for {policy} exited while starting; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"vLLM server for {policy} not ready in {START_TIMEOUT_S} s")
        self.startup_s = time.monotonic() - started

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter over its label sets."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        ]
        if not values:
            raise RuntimeError(f"{name} not in {self.url}/metrics")
        return sum(values)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
