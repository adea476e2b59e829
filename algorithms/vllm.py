"""vLLM's default scheduling, the baseline users run today (docs/algorithms.md, "Batch formers").

Arrival order. If the running requests' next tokens overflow the KV cache, preempt the most
recently admitted request until they fit (recompute: under the loop's default resume
preemption it keeps its tokens and re-prefills them later, as in vLLM), and admit nothing in
that iteration. Otherwise admit in order while each new prompt fits in the
memory free now (minus an optional watermark), stopping at the first that does not: no
look-ahead at how the batch will grow.
"""

from __future__ import annotations

from typing import Any, ClassVar

from algorithms._admission import admit_while_prompt_fits, check_fraction
from algorithms.state import SchedulerState, arrival_key
from algorithms.types import BatchDecision, WaitingRequest


class VLLMBatchFormer:
    """FCFS, admit while the prompt fits now, preempt the newest on overflow."""

    name: ClassVar[str] = "vllm"
    can_evict: ClassVar[bool] = True
    clairvoyant: ClassVar[bool] = False

    def __init__(self, *, watermark: float = 0.0) -> None:
        self.watermark = check_fraction("watermark", watermark)

    def waiting_key(self, request: WaitingRequest) -> Any:
        return arrival_key(request)

    def planning_length(self, request: WaitingRequest) -> int:
        return request.interval.hi

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        capacity = state.kv_capacity_tokens
        if state.running.next_step_tokens() > capacity:
            return BatchDecision(evict=state.running.newest_victims(capacity))
        free = int(capacity * (1.0 - self.watermark)) - state.running.next_step_tokens()
        return BatchDecision(
            admit=tuple(admit_while_prompt_fits(state.waiting, free, state.batch_room()))
        )
