"""Service settings in one place: `KVSCHED_*` environment variables, overridden by CLI flags.

Read once by `kvsched serve` (or `create_app()` when none are passed) and handed down; nothing
else reads the environment, and nothing reads it at import. Invalid values fail at start with
pydantic's message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything `kvsched serve` can be told (CLI flag = field name with dashes)."""

    model_config = SettingsConfigDict(env_prefix="KVSCHED_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    engine: Literal["sim", "hf"] = "sim"
    model: str | None = Field(None, description="local model directory (hf engine)")
    served_model_name: str | None = Field(None, description="name in /v1/models; default derived")
    policy: str = "amin"
    policy_params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    workers: int = Field(1, ge=1, le=64)
    cost_model: str = "llama3-8b-h100"
    kv_tokens: int | None = Field(None, ge=1, description="KV capacity per worker (tokens)")
    max_model_len: int = Field(8192, ge=2)
    max_batch_size: int | None = Field(256, ge=1)
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="chunked prefill: token budget per iteration (vLLM's name)"
    )
    speedup: float = Field(1.0, gt=0, description="sim engine: run this many times faster")
    sim_output_lengths: Path | None = Field(None, description="trace whose lengths sim samples")
    predictor: str = Field("default", description="'default', a .kvp path, or 'none'")
    max_queue: int = Field(4096, ge=1, description="accepted but unfinished requests, max")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None
    open_paths: tuple[str, ...] = ("/health", "/ready", "/metrics")
    shutdown_grace_s: float = Field(30.0, ge=0)
    worker_stall_timeout_s: float = Field(
        120.0, gt=0, description="kill and restart a worker silent this long while it has work"
    )
    seed: int = 0
    completion_log: Path | None = Field(None, description="append finished requests (JSONL)")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.engine == "hf" and not self.model:
            raise ValueError("engine 'hf' needs --model, a local Hugging Face model directory")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} is not a file")
        return self

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
