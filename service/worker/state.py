"""A worker's bookkeeping records: per-request streaming state and per-report counters.

`TrackedRequest.num_sent` only grows, so a token is streamed at most once: under resume
preemption an evicted request keeps its tokens and continues after them (`run_tokens` stays),
under restart preemption it regenerates its output from scratch (`run_tokens` back to 0) and the
tokens already sent are skipped. A request that came with output tokens (`output_offset`: a
prefill worker's hand-over, or a failover resubmission) counts them in its events'
`num_output_tokens`; a hand-over's KV is in `Transit` (one transfer at a time on the worker's
link) before the loop may admit it, a resubmission's is prefilled again here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from service.protocol import FinishReason, GenerationRequest, TokenEvent, WorkerStats
from service.worker.detok import IncrementalDetokenizer


@dataclass(slots=True)
class TrackedRequest:
    """Worker-side state of one request."""

    request: GenerationRequest
    loop_id: int
    detok: IncrementalDetokenizer
    num_sent: int = 0  # tokens streamed so far; never streamed again
    run_tokens: int = 0  # output position reached here (0 again after a restart preemption)
    num_evictions: int = 0
    first_scheduled_s: float | None = None
    in_engine: bool = False  # engine.add was called (release is owed)

    def event(
        self,
        tokens: tuple[int, ...] = (),
        text: str = "",
        reason: FinishReason | None = None,
        error: str | None = None,
    ) -> TokenEvent:
        """The request's next `TokenEvent` (final when `reason` is set)."""
        request = self.request
        return TokenEvent(
            request.request_id,
            tokens,
            text,
            reason,
            error,
            len(request.prompt_token_ids),
            request.output_offset + self.num_sent,
            self.first_scheduled_s,
            self.num_evictions,
        )


@dataclass(slots=True)
class WorkerCounters:
    """What a worker counted since its last `WorkerStats` report."""

    iterations: int = 0
    evictions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    batch_formation_s: list[float] = field(default_factory=list)
    host_overhead_s: float = 0.0
    handover_tokens: int = 0
    recomputed_tokens: int = 0
    handover_bytes: int = 0
    handover_s: list[float] = field(default_factory=list)
    handover_copy_s: float = 0.0

    def stats(
        self,
        worker_id: int,
        num_running: int,
        num_waiting: int,
        kv_tokens: int,
        kv_capacity_tokens: int,
    ) -> WorkerStats:
        """The report: the given gauges plus these counters."""
        return WorkerStats(
            worker_id,
            num_running,
            num_waiting,
            kv_tokens,
            kv_capacity_tokens,
            self.iterations,
            self.evictions,
            self.batch_formation_s,
            self.prompt_tokens,
            self.generation_tokens,
            self.host_overhead_s,
            self.handover_tokens,
            self.recomputed_tokens,
            self.handover_bytes,
            self.handover_s,
            self.handover_copy_s,
        )


@dataclass(slots=True)
class Transit:
    """KV hand-overs on their way to this (decode) worker, over one link, one at a time, so
    they never slow the iterations already running (via host memory; docs/serving.md, "Worker
    roles")."""

    link_free_s: float = 0.0
    queue: deque[tuple[float, TrackedRequest]] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.queue)

    def send(self, tracked: TrackedRequest, duration_s: float, now_s: float) -> None:
        """Start (or queue) the transfer of `tracked`'s KV, lasting `duration_s`."""
        self.link_free_s = max(now_s, self.link_free_s) + duration_s
        self.queue.append((self.link_free_s, tracked))

    def arrived(self, now_s: float) -> list[TrackedRequest]:
        """The requests whose KV has arrived by `now_s` (in arrival order), removed."""
        out = []
        while self.queue and self.queue[0][0] <= now_s:
            out.append(self.queue.popleft()[1])
        return out

    def wait_s(self, now_s: float) -> float | None:
        """Seconds until the next arrival (None: nothing in transit)."""
        return max(0.0, self.queue[0][0] - now_s) if self.queue else None

    def drop(self, tracked: TrackedRequest) -> None:
        """Forget `tracked` (cancelled); the link time it used stays spent."""
        self.queue = deque(item for item in self.queue if item[1] is not tracked)


@dataclass(slots=True)
class HostOverhead:
    """How long the engine waited on the host over a busy period of back-to-back iterations.

    lost = (now - the period's first iteration start) - the engine's own time of its iterations
    so far; the increase of its high-water mark is counted. An engine without pacing (hf) thus
    counts every gap between iterations; the sim engine, which catches up on late starts within
    one modelled iteration, counts only the time it really fell behind, not start-time jitter.
    """

    start_s: float | None = None  # None: idle, the next iteration starts a period
    engine_s: float = 0.0
    counted_s: float = 0.0

    def idle(self) -> None:
        self.start_s = None

    def before_step(self, now_s: float) -> float:
        """Call at an iteration's start; the lost time to add to the counter."""
        if self.start_s is None:
            self.start_s, self.engine_s, self.counted_s = now_s, 0.0, 0.0
            return 0.0
        lost_s = now_s - self.start_s - self.engine_s
        if lost_s <= self.counted_s:
            return 0.0
        added_s, self.counted_s = lost_s - self.counted_s, lost_s
        return added_s

    def after_step(self, engine_s: float) -> None:
        self.engine_s += engine_s
