"""`WorkerCounters`: what a worker counts between two `WorkerStats` reports (then starts afresh)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.protocol import WorkerStats


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
