"""`TrackedRequest`: a worker's streaming state of one request.

`num_sent` only grows, so a token is streamed at most once: under resume preemption an evicted
request keeps its tokens and continues after them (`run_tokens` stays), under restart preemption
it regenerates its output from scratch (`run_tokens` back to 0) and the tokens already sent are
skipped. A request that came with output tokens (`output_offset`: a prefill worker's hand-over,
or a failover resubmission) counts them in its events' `num_output_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.protocol import FinishReason, GenerationRequest, TokenEvent
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
