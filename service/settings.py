"""Service settings in one place: `KVSCHED_*` environment variables, overridden by CLI flags.

Read once by `kvsched serve` (or `create_app()` when none are passed) and handed down; nothing
else reads the environment, and nothing reads it at import. Invalid values fail at start with
pydantic's message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything `kvsched serve` can be told (CLI flag = field name with dashes)."""

    model_config = SettingsConfigDict(env_prefix="KVSCHED_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    engine: Literal["sim", "hf", "vllm", "openai-upstream"] = "sim"
    model: str | None = Field(None, description="local model directory (hf, vllm engines)")
    served_model_name: str | None = Field(None, description="name in /v1/models; default derived")
    policy: str = "asf"
    policy_params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    workers: int = Field(1, ge=1, le=64)
    cost_model: str = "llama3-8b-h100"
    kv_tokens: int | None = Field(None, ge=1, description="KV capacity per worker (tokens)")
    max_model_len: int = Field(8192, ge=2)
    max_batch_size: int | None = Field(256, ge=1)
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="chunked prefill: token budget per iteration (vLLM's name)"
    )
    plan: Path | None = Field(None, description="`kvsched plan --json` file: roles and limits")
    prefill_workers: int = Field(0, ge=0, description="workers that only prefill; rest decode")
    prefill_max_batch_size: int | None = Field(None, ge=1, description="on prefill workers")
    prefill_max_num_batched_tokens: int | None = Field(None, ge=1, description="the same")
    kv_transfer_ms_per_token: float | None = Field(
        None, ge=0, description="sim engine: KV hand-over per token (default: ClusterSpec's)"
    )
    speedup: float = Field(1.0, gt=0, description="sim engine: run this many times faster")
    sim_output_lengths: Path | None = Field(None, description="trace whose lengths sim samples")
    predictor: str = Field("default", description="'default', a .kvp path, or 'none'")
    online_calibration: bool = Field(
        True, description="recalibrate the predictor's intervals from finished requests"
    )
    online_calibration_step: float = Field(
        0.2, gt=0, le=1, description="online recalibration step (log space)"
    )
    online_calibration_state: Path | None = Field(
        None, description="JSON file keeping the online recalibration across restarts"
    )
    max_queue: int = Field(4096, ge=1, description="accepted but unfinished requests, max")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None
    open_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    shutdown_grace_s: float = Field(30.0, ge=0)
    preemption: Literal["resume", "restart"] = Field(
        "resume",
        description="an evicted request keeps its output and resumes (vLLM), or restarts",
    )
    max_resubmits: int = Field(
        3, ge=0, description="failover: times a request moves on from a dead worker, max"
    )
    worker_stall_timeout_s: float = Field(
        120.0, gt=0, description="kill and restart a worker silent this long while it has work"
    )
    seed: int = 0
    completion_log: Path | None = Field(None, description="append finished requests (JSONL)")
    upstream: tuple[str, ...] = Field((), description="openai-upstream: server base URLs")
    upstream_kv_tokens: int | None = Field(
        None, ge=1, description="openai-upstream: KV capacity per upstream (default: learned)"
    )
    upstream_timeout_s: float = Field(
        60.0, gt=0, description="openai-upstream: longest silence from an upstream mid-request"
    )
    upstream_probe_interval_s: float = Field(
        1.0, gt=0, description="openai-upstream: how often each upstream's /metrics is read"
    )
    tokenizer: str | None = Field(
        None, description="openai-upstream: local tokenizer directory (default: Llama-3's)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_plan(cls, data: Any) -> Any:
        """A `plan` fills the fields it knows that were not given (flags and env win)."""
        if isinstance(data, dict) and data.get("plan"):
            from service.pool.plan_serve import plan_settings

            return plan_settings(Path(data["plan"]), given=set(data)) | data
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.engine in ("hf", "vllm") and not self.model:
            raise ValueError(
                f"engine {self.engine!r} needs --model, a local Hugging Face model directory"
            )
        if self.prefill_workers and self.engine not in ("sim", "hf"):
            raise ValueError(f"worker roles need --engine sim or hf, not {self.engine!r}")
        if self.engine in ("vllm", "openai-upstream") and self.workers != 1:
            raise ValueError(f"engine {self.engine!r} runs no worker processes; leave --workers 1")
        self._check_upstream()
        if self.prefill_workers and self.prefill_workers >= self.workers:
            raise ValueError(
                f"--prefill-workers {self.prefill_workers} leaves no decode worker of"
                f" --workers {self.workers}"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} is not a file")
        return self

    def _check_upstream(self) -> None:
        if self.engine != "openai-upstream":
            if self.upstream:
                raise ValueError("--upstream is only for --engine openai-upstream")
            return
        if not self.upstream:
            raise ValueError("engine 'openai-upstream' needs --upstream URL (repeatable)")
        for url in self.upstream:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"upstream {url!r} is not an http:// or https:// base URL")
        if len(set(self.upstream)) != len(self.upstream):
            raise ValueError("the same --upstream URL is given twice")

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).name if self.model else f"kvsched-{self.engine}"

    def all_api_keys(self) -> frozenset[str]:
        """Keys from `api_keys` and from `api_keys_file` (one per line, # comments)."""
        keys = set(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.add(line)
        return frozenset(keys)
