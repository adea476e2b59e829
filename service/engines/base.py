"""The engine contract a worker drives: tokenize, run the loop's batches, free KV.

An engine is the worker's `Executor` (algorithms.loop): `execute` runs one iteration of the
batch the `SchedulingLoop` formed (a read-only `BatchView`) and returns its `StepResult`: the
token id every producing row emitted (`tokens`), the requests that finished and why each one
stopped (`finish_reasons`). Requests are identified by the loop's integer ids. The worker calls
`add` before a request is queued and `release` when it leaves the loop for any reason (finished,
evicted, aborted); it reads tokens only from step results, never from the engine.

Resumption: a request's output so far starts as the `output_token_ids` it was added with (a
hand-over or a failover resubmission). Whenever the loop (re)admits it, its row's `resumed[j]`
says how many of those output tokens to keep: the engine keeps exactly the first `resumed[j]`,
drops the rest (and any KV), prefills prompt + them (`batch.prompt_tokens[j]` tokens, perhaps
in chunks) and continues with output token `resumed[j] + 1`; its next token is always number
`resumed[j] + generated[j] + 1`. Under resume preemption an evicted request comes back with all
its tokens kept; under restart preemption with only those it was added with, and regenerates
the rest, which must come out the same (deterministic decoding).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.loop import StepResult
from service.protocol import GenerationRequest


class Tokenizer(Protocol):
    """The engine's tokenizer, also loaded by the gateway to count and validate prompts."""

    eos_token_id: int | None
    vocab_size: int  # token ids a prompt may hold: 0 .. vocab_size - 1

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class Engine(Protocol):
    """One model replica on one device (or a simulated one)."""

    name: str
    kv_capacity_tokens: int
    max_model_len: int

    def add(self, loop_id: int, request: GenerationRequest) -> None:
        """Register a request before the loop may admit it."""
        ...

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        """Run one iteration (the loop's Executor). The result's `tokens` has every producing
        row's token (loop id -> token, row order); `finished` the requests that ended (EOS,
        max_tokens or stop), each with its `finish_reasons` entry: "stop" (EOS) or "length"
        (max_tokens)."""
        ...

    def release(self, loop_id: int, *, forget: bool) -> None:
        """Free the request's KV. `forget=False` on eviction (it will be re-prefilled: keep
        its output tokens until its next admission says how many to keep)."""
        ...
