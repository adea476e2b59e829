"""What the gateway and the workers say to each other: small frozen records (docs/architecture.md).

The gateway turns an HTTP request into a `GenerationRequest` (already tokenized and given its
predicted interval) and hands it to a `Backend`; the backend answers with a stream of
`TokenEvent`s for that request, the last one carrying `finish_reason`. `WorkerStats` is what a
worker reports after its iterations, for /metrics and /v1/scheduler. Every record pickles
cheaply, so the same types cross the process boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One accepted request, validated and tokenized by the gateway.

    `lo`/`hi`: the predicted output-length interval (1 <= lo <= hi <= max_tokens).
    `arrival_s`: time.time() at the gateway, for latency metrics.
    `output_token_ids`: output already produced elsewhere: the worker continues at output
    position len(output_token_ids). By default they come with their KV (a prefill worker's
    first token, handed over to a decode worker); `recompute` says they come without it (a
    failover resubmission: the tokens a dead worker streamed), so the worker prefills prompt +
    them itself before it continues.
    `temperature` 0 decodes greedily; above 0 an engine that samples draws output token k from
    the top-`top_p` nucleus with randomness fixed by (`seed`, k), so a request replayed on
    another worker (a failover, a restart preemption) draws the same tokens.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    lo: int
    hi: int
    min_tokens: int = 0
    ignore_eos: bool = False
    priority: int = 0
    arrival_s: float = 0.0
    output_token_ids: tuple[int, ...] = ()
    recompute: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def output_offset(self) -> int:
        """Output tokens produced before this worker got the request (0: a fresh request)."""
        return len(self.output_token_ids)


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens produced for one request since its last event (usually one).

    `finish_reason` is set on the last event: "stop" (EOS), "length" (max_tokens), "abort"
    (cancelled), "error" (the worker failed; `error` says why). `first_scheduled_s` is when
    the request was first admitted into a batch (queue time = it - arrival). `http_status`: on
    an "error" event, the status a non-streaming client gets (None = 500; an upstream engine
    sets 502/503/504, or passes an upstream's 4xx through).
    """

    request_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    finish_reason: FinishReason | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    first_scheduled_s: float | None = None
    num_evictions: int = 0
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A worker's state after an iteration (gauges) and its counters since the last report."""

    worker_id: int
    num_running: int
    num_waiting: int
    kv_tokens: int
    kv_capacity_tokens: int
    iterations: int = 0
    evictions: int = 0
    batch_formation_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    host_overhead_s: float = 0.0  # iteration periods beyond the engine's own time (see worker)
    handover_tokens: int = 0  # KV tokens received from prefill workers instead of prefilled
    recomputed_tokens: int = 0  # prompt (+ resumed output) tokens prefilled again (see worker)
    handover_bytes: int = 0  # bytes of KV caches received from prefill workers (hf engine)
    handover_s: list[float] = field(default_factory=list)  # per received KV: export to installed
    handover_copy_s: float = 0.0  # of which serializing (prefill side) + installing (this side)


class Backend(Protocol):
    """Where the gateway sends accepted requests: a pool of worker processes, or a fake in tests."""

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; finish or fail in-flight requests within `grace_s`."""
        ...

    def is_ready(self) -> bool: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the request's events; the last has finish_reason set. Never hangs forever."""
        ...

    def cancel(self, request_id: str) -> None:
        """The client went away: free the request's KV within one iteration."""
        ...

    def describe(self) -> dict[str, Any]:
        """Policy, queue depth, KV usage and per-worker state, for GET /v1/scheduler."""
        ...
