"""A_max, the conservative algorithm of Chen et al. (docs/algorithms.md).

Plans every request at its upper bound `u_i = hi` and admits in ascending `hi` while the
future-memory check passes, stopping at the first failure; never overflows while true lengths stay
<= hi. With per-request intervals this is exactly MC-SF planning with `hi` (our reading [C]), so the
two share one implementation; they are kept as two names because the papers report both.
"""

from __future__ import annotations

from typing import ClassVar

from algorithms.mcsf import MCSFBatchFormer


class AMaxBatchFormer(MCSFBatchFormer):
    """A_max: ascending upper bound, planned with the upper bound."""

    name: ClassVar[str] = "amax"
