"""The `hf` engine: a Hugging Face causal LM from a local directory, on CUDA if present, else CPU.

Runs the loop's batches (issue 4): rows with prompt tokens to prefill forward that chunk (the
whole prompt unless chunked prefill is on), rows that produce forward their last token; each row
is its own forward pass with its own `DynamicCache` (batching rows is an optimisation not done
here). Decoding is greedy, so a request evicted and restarted from scratch regenerates exactly
the tokens it had produced. Never downloads: `local_files_only=True`. Needs the `hf` extra.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from algorithms.loop import StepResult
from algorithms.state import RunningSet
from service.protocol import GenerationRequest
from service.settings import Settings

DEFAULT_KV_TOKENS: Final = 16_384


def model_dir(settings: Settings) -> Path:
    """`settings.model` as an existing local directory (ValueError otherwise: no downloads)."""
    if not settings.model:
        raise ValueError("engine 'hf' needs --model, a local Hugging Face model directory")
    path = Path(settings.model)
    if not path.is_dir():
        raise ValueError(f"model {settings.model!r} is not a local directory (hf never downloads)")
    return path


class HFTokenizer:
    """Adapts a transformers tokenizer to `service.engines.base.Tokenizer`.

    `encode` adds the model's special tokens (BOS for Llama-style tokenizers), as vLLM does for
    /v1/completions prompts; `decode` skips special tokens, so EOS renders as "".
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_token_id: int | None = None if eos is None else int(eos)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text, add_special_tokens=True)]

    def decode(self, token_ids: list[int]) -> str:
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=True))


def load_tokenizer(settings: Settings) -> HFTokenizer:
    """The tokenizer saved in the model directory."""
    from transformers import AutoTokenizer

    path = model_dir(settings)
    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


@dataclass(slots=True)
class _Sequence:
    """One request's state in the engine: its KV cache and the tokens of its current run."""

    request: GenerationRequest
    cache: Any = None
    output: list[int] = field(default_factory=list)
    reason: str = "length"

    def restart(self) -> None:
        self.cache, self.output, self.reason = None, [], "length"


class HFEngine:
    """Implements `Engine` for a local causal LM.

    `kv_capacity_tokens` (settings.kv_tokens, default DEFAULT_KV_TOKENS) is the scheduling
    budget the loop plans with, not measured device memory. `max_model_len` is settings'
    limited by the model's `max_position_embeddings`. `execute` reports measured wall time.
    EOS ends a request unless `ignore_eos`; below `min_tokens` the EOS logits are masked.
    """

    name: str = "hf"

    def __init__(self, settings: Settings, worker_id: int, *, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.worker_id = worker_id
        if device is None:
            count = torch.cuda.device_count()
            device = f"cuda:{worker_id % count}" if count else "cpu"
        self.device = device
        dtype: Any = torch.float32 if device == "cpu" else "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir(settings), local_files_only=True, dtype=dtype
        )
        self.model = model.to(device).eval()
        self.eos_token_ids = _eos_ids(self.model)
        self.kv_capacity_tokens = settings.kv_tokens or DEFAULT_KV_TOKENS
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_model_len = min(settings.max_model_len, max_positions or settings.max_model_len)
        self._sequences: dict[int, _Sequence] = {}
        self._last: dict[int, int] = {}

    def add(self, loop_id: int, request: GenerationRequest) -> None:
        self._sequences[loop_id] = _Sequence(request)

    def execute(
        self, running: RunningSet, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        import torch

        started = time.perf_counter()
        self._last = {}
        finished: list[int] = []
        with torch.inference_mode():
            for j in range(len(running)):
                loop_id, chunk = int(running.ids[j]), int(prefill_tokens[j])
                if chunk == 0 and not produces[j]:
                    continue  # waits for its turn to prefill (chunked prefill)
                sequence = self._sequences[loop_id]
                logits = self._forward(sequence, chunk, int(running.prefill_left[j]))
                if produces[j]:
                    token, done = self._choose(sequence, logits)
                    self._last[loop_id] = token
                    if done:
                        finished.append(loop_id)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return StepResult(time.perf_counter() - started, tuple(finished))

    def _forward(self, sequence: _Sequence, chunk: int, prefill_left: int) -> Any:
        """Feed the next prompt chunk (or the last output token); the last position's logits."""
        import torch
        from transformers import DynamicCache

        prompt = sequence.request.prompt_token_ids
        if chunk > 0:
            offset = len(prompt) - prefill_left
            if offset == 0:  # a (re)start: the loop begins this run from scratch
                sequence.restart()
            inputs = list(prompt[offset : offset + chunk])
        elif sequence.output:
            inputs = [sequence.output[-1]]
        else:
            raise RuntimeError(f"request {sequence.request.request_id!r} decodes before prefill")
        if sequence.cache is None:
            sequence.cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([inputs], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=sequence.cache, use_cache=True)
        sequence.cache = out.past_key_values
        return out.logits[0, -1]

    def _choose(self, sequence: _Sequence, logits: Any) -> tuple[int, bool]:
        """Greedy next token, and whether it ends the request (EOS or max_tokens)."""
        request = sequence.request
        if len(sequence.output) < request.min_tokens and self.eos_token_ids:
            logits = logits.clone()
            logits[list(self.eos_token_ids)] = float("-inf")
        token = int(logits.argmax())
        sequence.output.append(token)
        if token in self.eos_token_ids and not request.ignore_eos:
            sequence.reason = "stop"
            return token, True
        return token, len(sequence.output) >= request.max_tokens

    def step_tokens(self) -> dict[int, int]:
        return self._last

    def finish_reason(self, loop_id: int) -> str:
        return self._sequences[loop_id].reason

    def release(self, loop_id: int, *, forget: bool) -> None:
        """Drop the KV cache; `forget=False` keeps the request for its re-prefill."""
        if forget:
            self._sequences.pop(loop_id, None)
        elif loop_id in self._sequences:
            self._sequences[loop_id].restart()


def _eos_ids(model: Any) -> frozenset[int]:
    """EOS ids from the generation config (may list several), else the model config."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset(int(i) for i in (eos if isinstance(eos, list | tuple) else [eos]))


def load_engine(settings: Settings, worker_id: int) -> HFEngine:
    """The worker's engine factory (service._engine_host.load_engine)."""
    return HFEngine(settings, worker_id)
