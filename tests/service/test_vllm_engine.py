"""`--engine vllm`: the parts that run anywhere (engine arguments, the policy's environment, the
error without vLLM) and, marked `gpu`, a tiny model served end to end (needs CUDA and vLLM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.backends.vllm import (
    AMX_EXTENSION,
    INSTALL_HINT,
    SCHEDULER_CLS,
    VllmBackend,
    engine_kwargs,
    load_tokenizer,
    scheduler_env,
)
from service.cli import main
from service.settings import Settings
from service.vllm_ext.config import load_settings
from tests.service.upstream_fake import free_port


def vllm_settings(model: Path, **fields: object) -> Settings:
    return Settings(engine="vllm", model=str(model), predictor="none", **fields)  # type: ignore[arg-type]


def test_engine_kwargs_configure_our_scheduler(tmp_path: Path) -> None:
    settings = vllm_settings(tmp_path, kv_tokens=1000, max_batch_size=8, max_model_len=512)
    kwargs = engine_kwargs(settings, cpu=False)
    assert kwargs["scheduler_cls"] == SCHEDULER_CLS == "service.vllm_ext.scheduler.KvschedScheduler"
    assert (kwargs["model"], kwargs["max_num_seqs"], kwargs["max_model_len"]) == (
        str(tmp_path), 8, 512,
    )  # fmt: skip
    assert (kwargs["block_size"], kwargs["num_gpu_blocks_override"]) == (16, 63)  # ceil(1000/16)
    on_cpu = engine_kwargs(settings, cpu=True)
    assert (on_cpu["block_size"], on_cpu["num_gpu_blocks_override"]) == (32, 32)  # ceil(1000/32)
    assert on_cpu["worker_extension_cls"] == AMX_EXTENSION and "worker_extension_cls" not in kwargs
    assert "num_gpu_blocks_override" not in engine_kwargs(vllm_settings(tmp_path))
    with pytest.raises(ValueError, match="local model directory"):
        engine_kwargs(vllm_settings(tmp_path / "missing"))


def test_scheduler_env_is_what_the_scheduler_reads(tmp_path: Path) -> None:
    settings = vllm_settings(tmp_path, policy="amax", policy_params={})
    env = scheduler_env(settings)
    assert env["KVSCHED_POLICY"] == "amax" and json.loads(env["KVSCHED_POLICY_PARAMS"]) == {}
    assert load_settings(env).policy == "amax"


def test_missing_vllm_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(RuntimeError, match="kvsched\\[vllm\\]"):
        VllmBackend(vllm_settings(tmp_path))
    with pytest.raises(RuntimeError, match="not installed"):
        load_tokenizer(vllm_settings(tmp_path))
    assert main(["serve", "--engine", "vllm", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"kvsched: error: engine 'vllm' needs vLLM, which is not installed: {INSTALL_HINT}\n"
    )


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def build_vllm_model(path: Path) -> None:
    """tiny_llama's tokenizer and a random Llama with head size 64, in bfloat16."""
    import torch
    import transformers

    from tests.service.tiny_llama import build_model

    build_model(path)  # tokenizer + a tiny model, whose weights are replaced below
    config = transformers.LlamaConfig.from_pretrained(path)
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads = 256, 4, 4
    config.intermediate_size, config.max_position_embeddings = 512, 256
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).bfloat16()
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("tiny-llama-vllm")
    build_vllm_model(path)
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--engine", "vllm", "--model", str(path),
           "--port", str(port), "--policy", "amin", "--predictor", "none",
           "--kv-tokens", "4096", "--max-model-len", "256", "--max-batch-size", "16",
           "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "kvsched serve --engine vllm exited during start-up"
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("server not ready within 600 s")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_serves_a_tiny_model_with_our_scheduler(vllm_server: str) -> None:
    from tests.service.tiny_llama import WORDS

    prompt = " ".join(WORDS[:8])
    body = {"prompt": prompt, "max_tokens": 6, "ignore_eos": True}
    done = httpx.post(f"{vllm_server}/v1/completions", json=body, timeout=120)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    assert answer["choices"][0]["finish_reason"] == "length"
    streamed = httpx.post(f"{vllm_server}/v1/completions", json={**body, "stream": True},
                          timeout=120)  # fmt: skip
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    text = "".join(
        json.loads(line[6:])["choices"][0]["text"]
        for line in streamed.text.split("\n\n")
        if line.startswith("data: {")
    )
    assert text == answer["choices"][0]["text"]  # greedy: the same tokens both times
    state = httpx.get(f"{vllm_server}/v1/scheduler", timeout=10).json()
    assert state["engine"] == "vllm" and state["scheduler_cls"] == SCHEDULER_CLS
    assert state["policy"] == "asf" and state["num_requests"] == 0
