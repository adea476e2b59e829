"""Driving a real `WorkerPool` from a test: start it, run a scenario, collect a request's events.

Every wait is bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from service.pool.pool import WorkerPool
from service.protocol import GenerationRequest, TokenEvent


async def collect(
    pool: WorkerPool, req: GenerationRequest, streamed: dict[str, int] | None = None
) -> list[TokenEvent]:
    """Every event of `req`; `streamed` counts its tokens as they arrive."""
    events = []
    async for event in pool.generate(req):
        events.append(event)
        if streamed is not None:
            streamed[req.request_id] = streamed.get(req.request_id, 0) + len(event.token_ids)
    return events


def run(scenario: Callable[[WorkerPool], Awaitable[Any]], pool: WorkerPool) -> Any:
    """Start `pool`, await `scenario(pool)`, stop the pool; the scenario's result."""

    async def main() -> Any:
        await asyncio.wait_for(pool.start(), 30)
        try:
            return await scenario(pool)
        finally:
            await asyncio.wait_for(pool.stop(1.0), 30)

    return asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


def check_streams(
    events: dict[str, list[TokenEvent]],
    requests: list[GenerationRequest],
    expected: dict[str, list[int]],
) -> None:
    """Exactly one final event each, no error, and the client's tokens = `expected`."""
    for req in requests:
        stream = events[req.request_id]
        final = stream[-1]
        assert [e for e in stream if e.finish_reason] == [final], req.request_id
        assert final.error is None, (req.request_id, final.error)
        tokens = [t for e in stream for t in e.token_ids]
        assert tokens == expected[req.request_id], req.request_id
        assert final.num_output_tokens == len(tokens)
        assert final.num_prompt_tokens == len(req.prompt_token_ids)
        want = "length" if len(tokens) == req.max_tokens else "stop"
        assert final.finish_reason == want, req.request_id
