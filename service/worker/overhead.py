"""`HostOverhead`: the time a worker's engine waited on the host between busy iterations."""

from __future__ import annotations

from dataclasses import dataclass


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
            self.start_s = now_s
            self.engine_s = 0.0
            self.counted_s = 0.0
            return 0.0
        lost_s = now_s - self.start_s - self.engine_s
        if lost_s <= self.counted_s:
            return 0.0
        added_s, self.counted_s = lost_s - self.counted_s, lost_s
        return added_s

    def after_step(self, engine_s: float) -> None:
        self.engine_s += engine_s
