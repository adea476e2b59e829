"""The gateway-side admission queue of the `openai-upstream` engine, in the policy's order.

An upstream gives no iteration-level control, so a policy here only orders the queue (and the
admission test is the projected-KV one of `Upstream.fits`): `vllm` and `fcfs` serve in arrival
order; `amin` serves the smallest predicted lower bound `lo` first; every other policy (`sf`,
`mcsf`, `sorted-f`, `sorted-f-c`, `amax`) the smallest upper bound `hi` first; ties by arrival.
Invariant: `pop` and `peek` never return an entry that was `remove`d.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Final, Literal

from service.backends.upstream.state import Upstream
from service.protocol import GenerationRequest, TokenEvent

Order = Literal["arrival", "lo", "hi"]
ORDER_BY_POLICY: Final[dict[str, Order]] = {"vllm": "arrival", "fcfs": "arrival", "amin": "lo"}


def order_of(policy: str) -> Order:
    """How `policy` orders the upstream queue (see the module docstring)."""
    return ORDER_BY_POLICY.get(policy, "hi")


@dataclass(slots=True, eq=False)
class Flight:
    """One accepted request: its event queue, its task, where it runs and what it streamed."""

    request: GenerationRequest
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    admitted: asyncio.Future[Upstream] | None = None
    admitted_s: float | None = None
    num_tokens: int = 0
    done: bool = False

    @property
    def weight_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + self.request.hi


class AdmissionQueue:
    """A priority queue of waiting entries keyed by `order`, with removal by request id."""

    def __init__(self, order: Order) -> None:
        self.order = order
        self._heap: list[tuple[int, int, str]] = []
        self._live: dict[str, tuple[int, Flight]] = {}  # request id -> (its heap seq, entry)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def push(self, entry: Flight) -> None:
        request = entry.request
        if request.request_id in self._live:
            raise ValueError(f"request {request.request_id!r} is already queued")
        key = {"arrival": 0, "lo": request.lo, "hi": request.hi}[self.order]
        seq = next(self._seq)
        heapq.heappush(self._heap, (key, seq, request.request_id))
        self._live[request.request_id] = (seq, entry)

    def peek(self) -> Flight | None:
        while self._heap:
            _, seq, request_id = self._heap[0]
            live = self._live.get(request_id)
            if live is not None and live[0] == seq:
                return live[1]
            heapq.heappop(self._heap)  # removed (or removed and queued again) earlier
        return None

    def pop(self) -> Flight:
        entry = self.peek()
        if entry is None:
            raise IndexError("pop from an empty admission queue")
        heapq.heappop(self._heap)
        del self._live[entry.request.request_id]
        return entry

    def remove(self, request_id: str) -> bool:
        """Forget a waiting entry (cancelled); False if it is not queued."""
        return self._live.pop(request_id, None) is not None

    def entries(self) -> list[Flight]:
        return [entry for _, entry in self._live.values()]
