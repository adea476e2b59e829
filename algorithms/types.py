"""Value types shared by every batch former: what a policy may know about a request.

The true output length is deliberately absent: only the executor (simulated or real) knows it,
so a non-clairvoyant policy cannot read it by accident (docs/algorithms.md, "The model").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

RequestId = int


@dataclass(frozen=True, slots=True)
class LengthInterval:
    """Predicted output length interval [lo, hi] in tokens, 1 <= lo <= hi."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"interval needs 1 <= lo <= hi, got [{self.lo}, {self.hi}]")

    @property
    def width(self) -> int:
        return self.hi - self.lo

    def contains(self, length: int) -> bool:
        return self.lo <= length <= self.hi


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """A request that is not running: arrived, or evicted and back in the queue.

    `resumed` counts output tokens the request already produced that `prompt_tokens` includes:
    after a resume preemption (vLLM's recompute), a failover re-submission or a prefill/decode
    hand-over, the request prefills prompt + those tokens and continues with the next one. Its
    `interval` and `max_tokens` then count only the tokens still to come, so a batch former
    plans every request the same way whatever its history.
    `max_generated` is the most tokens an earlier run produced before it was evicted and
    restarted from scratch (restart preemption): the request is known to need at least that
    many, which is what A_min's refinement uses.
    `max_tokens` is the request's hard output cap (OpenAI's `max_tokens`); None = only the KV
    capacity limits it.
    """

    id: RequestId
    arrival_s: float
    prompt_tokens: int
    interval: LengthInterval
    max_generated: int = 0
    num_evictions: int = 0
    max_tokens: int | None = None
    resumed: int = 0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.id}: prompt_tokens must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"request {self.id}: max_tokens must be >= 1")
        if not 0 <= self.resumed < self.prompt_tokens:
            raise ValueError(f"request {self.id}: resumed must be in [0, prompt_tokens)")

    def after_eviction(
        self, generated: int, interval: LengthInterval | None = None, *, resume: bool = False
    ) -> WaitingRequest:
        """The same request back in the queue after a run that produced `generated` tokens.

        `interval` replaces the prediction when a refiner has tightened it during the run.
        Restart (default): the tokens are lost and regenerated; the request is known to need
        at least `generated`. Resume: it keeps them, so its prompt grows by `generated` and
        its interval and cap shrink by as much (never below one more token).
        """
        interval = interval or self.interval
        if not resume:
            return replace(
                self,
                interval=interval,
                max_generated=max(self.max_generated, generated),
                num_evictions=self.num_evictions + 1,
            )
        lo = max(1, interval.lo - generated)
        return replace(
            self,
            prompt_tokens=self.prompt_tokens + generated,
            interval=LengthInterval(lo, max(lo, interval.hi - generated)),
            max_tokens=None if self.max_tokens is None else max(1, self.max_tokens - generated),
            resumed=self.resumed + generated,
            num_evictions=self.num_evictions + 1,
        )


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """What a batch former decides for one iteration (our `SchedulerOutput`).

    `evict` happens before the iteration runs: evicted requests free all their KV tokens, and
    either keep their tokens (resume preemption) or lose them (restart). `admit` may name
    requests evicted in the same decision under restart (A_min re-admits from scratch); under
    resume such re-admissions are dropped (the request comes back at a later iteration).
    Admitted requests are prefilled and produce their first token in this iteration.
    """

    admit: tuple[RequestId, ...] = field(default=())
    evict: tuple[RequestId, ...] = field(default=())

    @staticmethod
    def empty() -> BatchDecision:
        return BatchDecision()
