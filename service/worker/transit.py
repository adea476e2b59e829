"""`Transit`: hand-overs whose KV is on its way to this (decode) worker.

A hand-over's KV is in transit (one transfer at a time on the worker's link) before the loop may
admit it; a failover resubmission has none and is prefilled again here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from service.worker.tracked import TrackedRequest


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
