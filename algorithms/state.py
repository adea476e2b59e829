"""The scheduler's view of its queues: an ordered waiting queue and an array-backed running set.

`WaitingQueue` keeps waiting requests sorted by the batch former's own priority key, so a
former that admits a prefix of its order touches only that prefix (O(k log n), not O(n)).
`RunningSet` keeps running requests as parallel numpy arrays in admission order, so one
iteration's bookkeeping is a handful of vectorised operations whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sortedcontainers import SortedKeyList

from algorithms.types import LengthInterval, RequestId, WaitingRequest

IntArray = NDArray[np.int64]
WaitingKey = Callable[[WaitingRequest], Any]


def arrival_key(request: WaitingRequest) -> tuple[float, int]:
    """Arrival order, ties in trace order (ids are assigned in trace order)."""
    return (request.arrival_s, request.id)


class WaitingQueue:
    """Waiting requests in a batch former's priority order (first = served first)."""

    def __init__(self, key: WaitingKey = arrival_key) -> None:
        self._sorted: SortedKeyList = SortedKeyList(key=key)
        self._by_id: dict[RequestId, WaitingRequest] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[WaitingRequest]:
        return iter(self._sorted)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._by_id

    def get(self, request_id: RequestId) -> WaitingRequest:
        return self._by_id[request_id]

    def last(self, count: int) -> list[WaitingRequest]:
        """The `count` requests at the back of the order."""
        return list(self._sorted[len(self._sorted) - count :]) if count > 0 else []

    def add(self, request: WaitingRequest) -> None:
        if request.id in self._by_id:
            raise ValueError(f"request {request.id} is already waiting")
        self._by_id[request.id] = request
        self._sorted.add(request)

    def pop(self, request_id: RequestId) -> WaitingRequest:
        request = self._by_id.pop(request_id)
        self._sorted.remove(request)
        return request


_FIELDS = (
    "ids",
    "prompt_tokens",
    "lo",
    "hi",
    "generated",
    "max_generated",
    "start_step",
    "prefill_left",
    "max_tokens",
    "admitted_lo",
    "admitted_hi",
    "resumed",
)


class RunningSet:
    """Running requests as parallel int64 arrays, oldest admission first.

    `generated[j]` counts tokens produced by request j's current run before this iteration;
    in the coming iteration it holds `prompt_tokens[j] + generated[j] + 1` KV tokens
    (docs/algorithms.md, "The model"). `prefill_left[j]` is the part of the prompt not yet
    prefilled: the whole prompt on admission, 0 once the first token is out. Only chunked prefill
    makes it span several iterations; the KV accounting reserves the whole prompt from admission
    either way. `lo`/`hi` are the current interval (a refiner may move them while the request runs);
    `admitted_lo`/`admitted_hi` is the interval it was admitted with, `max_tokens` its output cap.
    `resumed[j]` counts output tokens an earlier run produced that `prompt_tokens[j]` includes
    (`WaitingRequest.resumed`): request j's output so far is `resumed[j] + generated[j]`. `resume`
    says what an evicted row keeps: its tokens (True, vLLM's recompute preemption) or nothing
    (False, the papers' restart).
    """

    def __init__(self, *, resume: bool = True) -> None:
        self.resume = resume
        empty = np.zeros(0, dtype=np.int64)
        self.ids: IntArray = empty
        self.prompt_tokens: IntArray = empty
        self.lo: IntArray = empty
        self.hi: IntArray = empty
        self.generated: IntArray = empty
        self.max_generated: IntArray = empty
        self.start_step: IntArray = empty
        self.prefill_left: IntArray = empty
        self.max_tokens: IntArray = empty
        self.admitted_lo: IntArray = empty
        self.admitted_hi: IntArray = empty
        self.resumed: IntArray = empty
        self._requests: dict[RequestId, WaitingRequest] = {}
        self.kv_tokens = 0  # sum of prompt + generated over running requests

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def request(self, request_id: RequestId) -> WaitingRequest:
        """The request record a running request was admitted with."""
        return self._requests[request_id]

    def next_step_tokens(self) -> int:
        """KV tokens the running requests hold in the coming iteration (one new token each)."""
        return self.kv_tokens + len(self._requests)

    def newest_victims(self, capacity: int) -> tuple[RequestId, ...]:
        """Most recently admitted first until the rest fit: vLLM pops the tail of its running
        list, and rows here are in admission order too."""
        overflow = self.next_step_tokens() - capacity
        victims: list[RequestId] = []
        tokens = self.prompt_tokens + self.generated + 1
        for j in range(len(self.ids) - 1, -1, -1):
            if overflow <= 0:
                break
            victims.append(int(self.ids[j]))
            overflow -= int(tokens[j])
        return tuple(victims)

    def position(self, request_id: RequestId) -> int:
        return int(np.flatnonzero(self.ids == request_id)[0])

    def admit(self, requests: list[WaitingRequest], step: int, kv_capacity_tokens: int) -> None:
        """Start `requests` in iteration `step`; output caps are limited by the KV capacity."""
        if not requests:
            return
        count = len(requests)
        new = {
            "ids": [r.id for r in requests],
            "prompt_tokens": [r.prompt_tokens for r in requests],
            "lo": [r.interval.lo for r in requests],
            "hi": [r.interval.hi for r in requests],
            "generated": [0] * count,
            "max_generated": [r.max_generated for r in requests],
            "start_step": [step] * count,
            "prefill_left": [r.prompt_tokens for r in requests],
            "max_tokens": [_output_cap(r, kv_capacity_tokens) for r in requests],
            "admitted_lo": [r.interval.lo for r in requests],
            "admitted_hi": [r.interval.hi for r in requests],
            "resumed": [r.resumed for r in requests],
        }
        for name in _FIELDS:
            added = np.asarray(new[name], dtype=np.int64)
            setattr(self, name, np.concatenate((getattr(self, name), added)))
        for r in requests:
            self._requests[r.id] = r
        self.kv_tokens += sum(r.prompt_tokens for r in requests)

    def remove(self, keep: NDArray[np.bool_]) -> list[WaitingRequest]:
        """Drop rows where `keep` is False; return each as it goes back to the queue.

        The returned records carry the current interval (refined while running, if a refiner
        is on) and the tokens the run produced (`WaitingRequest.after_eviction`). Callers that
        complete requests simply ignore them.
        """
        dropped = np.flatnonzero(~keep)
        out = [self.evicted_record(int(j)) for j in dropped]
        for request in out:
            del self._requests[request.id]
        self.kv_tokens -= int(self.prompt_tokens[dropped].sum() + self.generated[dropped].sum())
        for name in _FIELDS:
            setattr(self, name, getattr(self, name)[keep])
        return out

    def evicted_record(self, row: int) -> WaitingRequest:
        """Row `row` as a waiting request after eviction: its tokens kept (resume) or lost
        (restart), what was learned of its length kept either way."""
        request = self._requests[int(self.ids[row])]
        interval = LengthInterval(int(self.lo[row]), int(self.hi[row]))
        return request.after_eviction(int(self.generated[row]), interval, resume=self.resume)

    def advance(self, prefilled: IntArray, produced: NDArray[np.bool_]) -> None:
        """Record an iteration: `prefilled` prompt tokens per row, `produced` one token each."""
        self.prefill_left -= prefilled
        self.generated += produced
        self.kv_tokens += int(produced.sum())

    def set_generated(self, generated: IntArray) -> None:
        """Record tokens counted by an engine that runs elsewhere (inside vLLM, an upstream
        server): row j has produced `generated[j]` tokens in its current run; a row with a
        token out has finished its prefill."""
        generated = np.asarray(generated, dtype=np.int64)
        if generated.shape != self.generated.shape:
            raise ValueError(f"expected {len(self.ids)} counts, got {generated.shape}")
        self.kv_tokens += int(generated.sum() - self.generated.sum())
        self.generated = generated
        self.prefill_left = np.where(generated > 0, 0, self.prefill_left)


def _output_cap(request: WaitingRequest, kv_capacity_tokens: int) -> int:
    cap = kv_capacity_tokens - request.prompt_tokens
    if request.max_tokens is not None:
        cap = min(cap, request.max_tokens)
    return max(cap, request.interval.hi)


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """What a batch former sees at the start of an iteration. It must not mutate it.

    `step` is the iteration (slot) index t; `now_s` the clock at its start.
    `max_batch_size` caps running + admitted requests (vLLM's max_num_seqs); None = no cap.
    """

    step: int
    now_s: float
    waiting: WaitingQueue
    running: RunningSet
    kv_capacity_tokens: int
    max_batch_size: int | None = None

    def batch_room(self) -> int:
        """How many more requests the batch may take this iteration."""
        if self.max_batch_size is None:
            return len(self.waiting)
        return max(0, self.max_batch_size - len(self.running))
