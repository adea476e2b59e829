"""The policy's batch former deciding, at the gateway, which waiting request goes to which upstream.

An upstream server runs its own iteration scheduler, so what the gateway controls is admission:
which request is sent where, and when. `UpstreamScheduler` keeps the waiting requests in one
`WaitingQueue` in the former's order and, per upstream, a `RunningSet` of the requests sent there
with the output tokens each has streamed: the KV model the former plans against, with the
upstream's KV capacity as M. Each admission is one call of the former through
`algorithms.decision.settle`, the same checks the scheduling loop and the vLLM plug-in apply
(docs/serving-upstream.md, "Admission: the policy's batch former"):

* the least-loaded reachable upstream that can still take a request is asked first; the former
  sees the whole waiting queue, that upstream's running requests and room for one more request
  (`max_batch_size` = its running requests + 1, at most `--max-batch-size`), so requests spread
  over upstreams by load and each one goes where the former admits it;
* an upstream cannot evict on our behalf: when the former asks for evictions (or the projection
  overflows the capacity) that upstream takes nothing more until requests finish, and the
  upstream's own engine preempts if it must;
* an idle upstream takes the first waiting request in the former's order even when the former
  would not admit it (a request larger than the capacity would wait forever otherwise); a
  former that raises (a bug) is logged and admits nothing, so the idle rule still drains the
  queue and no accepted request waits forever;
* until an upstream's capacity is known (`--upstream-kv-tokens`, or learned from its /metrics)
  the former cannot plan against it: it takes the first waiting request in the former's order
  while it has fewer than `--max-batch-size` requests and reports KV usage below 90%.

Invariant: every queued request is in exactly one place: the waiting queue, or the running set
of the upstream it was sent to; `remove` takes it out of either.
"""

from __future__ import annotations

import itertools
import logging
from typing import Final

import numpy as np

from algorithms.decision import settle
from algorithms.protocols import BatchFormer
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import LengthInterval, RequestId, WaitingRequest
from service.backends.upstream.flight import Flight
from service.backends.upstream.state import Upstream

UNBOUNDED_TOKENS: Final = 2**62  # KV capacity of an upstream whose capacity is not known yet
logger = logging.getLogger("kvsched.upstream")


class UpstreamScheduler:
    """Admissions of `former` over `upstreams` (see the module docstring)."""

    def __init__(self, former: BatchFormer, upstreams: list[Upstream]) -> None:
        self.former = former
        self.upstreams = upstreams
        self.waiting = WaitingQueue(key=former.waiting_key)
        self.step = 0  # dispatch rounds so far (the formers' iteration index)
        self._running = {u.index: RunningSet(resume=True) for u in upstreams}
        self._flights: dict[RequestId, Flight] = {}
        self._ids: dict[str, RequestId] = {}
        self._where: dict[RequestId, Upstream] = {}
        self._next_id = itertools.count()

    def __len__(self) -> int:
        """Requests waiting for an upstream."""
        return len(self.waiting)

    def running(self, upstream: Upstream) -> RunningSet:
        return self._running[upstream.index]

    def running_flights(self, upstream: Upstream) -> list[Flight]:
        """The requests sent to `upstream` and not yet removed, oldest first."""
        return [self._flights[rid] for rid in self._running[upstream.index].ids.tolist()]

    def queue(self, flight: Flight) -> None:
        """Add an accepted request to the waiting queue (again, after a failed connection)."""
        request = flight.request
        if request.request_id in self._ids:
            raise ValueError(f"request {request.request_id!r} is already queued")
        rid = next(self._next_id)
        self._ids[request.request_id] = rid
        self._flights[rid] = flight
        self.waiting.add(
            WaitingRequest(
                id=rid,
                arrival_s=request.arrival_s,
                prompt_tokens=max(1, len(request.prompt_token_ids)),
                interval=LengthInterval(request.lo, request.hi),
                max_tokens=request.max_tokens,
            )
        )

    def remove(self, request_id: str) -> bool:
        """Forget a request (finished, failed, cancelled); False if it is not here."""
        rid = self._ids.pop(request_id, None)
        if rid is None:
            return False
        del self._flights[rid]
        upstream = self._where.pop(rid, None)
        if upstream is None:
            self.waiting.pop(rid)
        else:
            running = self._running[upstream.index]
            running.remove(running.ids != rid)
        return True

    def is_waiting(self, request_id: str) -> bool:
        rid = self._ids.get(request_id)
        return rid is not None and rid in self.waiting

    def waiting_flights(self) -> list[Flight]:
        return [self._flights[r.id] for r in self.waiting]

    def dispatch(self, now_s: float) -> list[tuple[Flight, Upstream]]:
        """Admit waiting requests while some upstream takes one; book each on its upstream."""
        self._read_progress()
        admitted: list[tuple[Flight, Upstream]] = []
        full: set[int] = set()
        while len(self.waiting):
            open_ = [u for u in self.upstreams if u.reachable and u.index not in full]
            if not open_:
                break
            upstream = min(open_, key=lambda u: (u.load(), u.num_in_flight, u.index))
            rid = self._choose(upstream, now_s)
            if rid is None:
                full.add(upstream.index)
                continue
            flight = self._flights[rid]
            running = self._running[upstream.index]
            capacity = upstream.capacity_tokens or UNBOUNDED_TOKENS
            running.admit([self.waiting.pop(rid)], self.step, capacity)
            self._where[rid] = upstream
            upstream.admit(flight.weight_tokens, len(flight.request.prompt_token_ids))
            admitted.append((flight, upstream))
        self.step += 1
        return admitted

    def _choose(self, upstream: Upstream, now_s: float) -> RequestId | None:
        """The request `upstream` takes now, or None."""
        running = self._running[upstream.index]
        first = next(iter(self.waiting)).id
        if not len(running):
            preferred = self._former_choice(upstream, running, now_s)
            return first if preferred is None else preferred
        if len(running) >= upstream.max_in_flight:
            return None
        if upstream.capacity_tokens is None:
            return first if upstream.takes_another() else None
        return self._former_choice(upstream, running, now_s)

    def _former_choice(
        self, upstream: Upstream, running: RunningSet, now_s: float
    ) -> RequestId | None:
        capacity = upstream.capacity_tokens
        if capacity is None:
            return None
        room = min(len(running) + 1, upstream.max_in_flight)
        state = SchedulerState(self.step, now_s, self.waiting, running, capacity, room)
        try:
            decision = self.former.form_batch(state)
            settled = settle(
                self.former,
                decision,
                self.waiting,
                running,
                capacity,
                max_batch_size=room,
                strict=False,
            )
        except Exception:  # a bug in the former must not strand the requests waiting here
            logger.exception(
                "%s failed on %s; it admits nothing there", self.former.name, upstream.url
            )
            return None
        if settled.evict or not settled.admit:
            return None
        return settled.admit[0]

    def _read_progress(self) -> None:
        """Bring each running set up to date with the tokens its requests streamed."""
        for running in self._running.values():
            if len(running):
                ids = running.ids.tolist()
                streamed = [self._flights[rid].num_tokens for rid in ids]
                running.set_generated(np.asarray(streamed, dtype=np.int64))
