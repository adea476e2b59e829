"""`PolicyQueue`: vLLM's `waiting` queue, showing vLLM only what the batch former admits.

vLLM's waiting loop admits from the front of `waiting` until something does not fit. This
queue holds every waiting request but exposes, during one `schedule()`, only the requests the
former admitted, in its order; whatever vLLM does not take goes back to the held set. So vLLM
admits a prefix of the former's decision and never a request the former did not choose.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request


class PolicyQueue(RequestQueue):
    """All waiting requests; `expose`d ones are the only ones vLLM can peek or pop."""

    def __init__(self, on_add: Callable[[Request], None]) -> None:
        self._held: dict[str, Request] = {}
        self._exposed: deque[Request] = deque()
        self._on_add = on_add

    def add_request(self, request: Request) -> None:
        """A request vLLM queues (new, or a streaming session's next turn)."""
        self._held[request.request_id] = request
        self._on_add(request)

    def pop_request(self) -> Request:
        return self._exposed.popleft()

    def peek_request(self) -> Request:
        if not self._exposed:
            raise IndexError("peek from an empty queue")
        return self._exposed[0]

    def prepend_request(self, request: Request) -> None:
        """vLLM preempted `request` (the scheduler's hook tells the mirror)."""
        self._held[request.request_id] = request

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        """Requests vLLM skipped in this step's scan: held until the former admits them again."""
        for request in requests:
            self._held[request.request_id] = request

    def remove_request(self, request: Request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = {request.request_id for request in requests}
        for request_id in gone:
            self._held.pop(request_id, None)
        if self._exposed and any(r.request_id in gone for r in self._exposed):
            self._exposed = deque(r for r in self._exposed if r.request_id not in gone)

    def __bool__(self) -> bool:
        """What vLLM's admission scan sees: whether anything is exposed."""
        return bool(self._exposed)

    def __len__(self) -> int:
        """Every waiting request (vLLM's request counts and stats)."""
        return len(self._held) + len(self._exposed)

    def __iter__(self) -> Iterator[Request]:
        return iter([*self._held.values(), *self._exposed])

    def __contains__(self, request: object) -> bool:
        request_id = getattr(request, "request_id", None)
        return request_id in self._held or any(r is request for r in self._exposed)

    def expose(self, requests: Iterable[Request]) -> None:
        """Offer these held requests to vLLM's admission scan, in this order."""
        for request in requests:
            if self._held.pop(request.request_id, None) is not None:
                self._exposed.append(request)

    def withdraw(self) -> None:
        """Take back what vLLM did not admit."""
        for request in self._exposed:
            self._held[request.request_id] = request
        self._exposed.clear()
