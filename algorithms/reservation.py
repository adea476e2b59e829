"""Adaptive reservation: how much of its expected remaining output a request is planned with.

Admission plans every request at `ratio` times its expected remaining length (clipped to
[1, what its upper bound still allows]) and checks the future-memory projection with that. The
ratio moves like SGLang's `new_token_ratio`: each iteration that starts with the KV cache
overflowing (the running requests outgrew what was planned, so some must be evicted) raises it
by `tighten_step`, each iteration without an overflow lowers it by `relax_step`, within
[`minimum`, `maximum`]. In steady state the ratio settles where overflows start about
relax_step / (tighten_step + relax_step) of the iterations.

The ratio is the only state a batch former carries across iterations. It is a deterministic
function of the sequence of iterations observed (one `observe` per iteration index; a second
call for the same index changes nothing), so a loop and a mirror that replay the same states see
the same ratios. `reset` returns to `initial`.
"""

from __future__ import annotations

import math

import numpy as np

from algorithms.remaining import FloatArray, IntArray


class AdaptiveReservation:
    """The planning ratio, tightened on overflows and relaxed while none happen."""

    def __init__(
        self,
        *,
        initial: float,
        minimum: float,
        maximum: float,
        tighten_step: float,
        relax_step: float,
    ) -> None:
        if not 0.0 < minimum <= initial <= maximum or not math.isfinite(maximum):
            raise ValueError(
                f"reservation ratios need 0 < minimum <= initial <= maximum < inf, got "
                f"{minimum}, {initial}, {maximum}"
            )
        if tighten_step < 0.0 or relax_step < 0.0:
            raise ValueError("tighten_step and relax_step must be >= 0")
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self.tighten_step = tighten_step
        self.relax_step = relax_step
        self.ratio = initial
        self._last_step: int | None = None

    def reset(self) -> None:
        self.ratio = self.initial
        self._last_step = None

    def observe(self, step: int, overflowed: bool) -> float:
        """Account for iteration `step` (once) and return the ratio to plan it with."""
        if step != self._last_step:
            self._last_step = step
            if overflowed:
                self.ratio = min(self.maximum, self.ratio + self.tighten_step)
            else:
                self.ratio = max(self.minimum, self.ratio - self.relax_step)
        return self.ratio

    def planned_remaining(self, expected: FloatArray, most: IntArray) -> IntArray:
        """ceil(ratio * expected) per row, within [1, most] (`most` < 1 counts as 1)."""
        planned = np.ceil(self.ratio * expected).astype(np.int64)
        result: IntArray = np.clip(planned, 1, np.maximum(most, 1))
        return result

    def planned_remaining_one(self, expected: float, most: int) -> int:
        return max(1, min(math.ceil(self.ratio * expected), most))
