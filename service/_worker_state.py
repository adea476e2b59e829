"""A worker's bookkeeping records: per-request streaming state and per-report counters.

`TrackedRequest.num_sent` only grows, so a token is streamed at most once even when an evicted
request regenerates its output from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.detok import IncrementalDetokenizer
from service.protocol import GenerationRequest


@dataclass(slots=True)
class TrackedRequest:
    """Worker-side state of one request."""

    request: GenerationRequest
    loop_id: int
    detok: IncrementalDetokenizer
    num_sent: int = 0  # tokens streamed so far; never streamed again
    run_tokens: int = 0  # tokens produced by the current run (0 again after an eviction)
    num_evictions: int = 0
    first_scheduled_s: float | None = None
    in_engine: bool = False  # engine.add was called (release is owed)


@dataclass(slots=True)
class WorkerCounters:
    """What a worker counted since its last `WorkerStats` report."""

    iterations: int = 0
    evictions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    batch_formation_s: list[float] = field(default_factory=list)
    host_overhead_s: float = 0.0
