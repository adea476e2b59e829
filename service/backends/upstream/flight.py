"""`Flight`: one request the `openai-upstream` engine accepted, from queueing to its last event."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.backends.upstream.state import Upstream
from service.protocol import GenerationRequest, TokenEvent


@dataclass(slots=True, eq=False)
class Flight:
    """An accepted request: its event queue, its task, where it runs and what it streamed.

    `admitted` is resolved with the upstream the scheduler sends it to (or an UpstreamError);
    `num_tokens` counts the output tokens streamed so far and only grows.
    """

    request: GenerationRequest
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    admitted: asyncio.Future[Upstream] | None = None
    admitted_s: float | None = None
    num_tokens: int = 0
    done: bool = False

    @property
    def weight_tokens(self) -> int:
        """Projected KV: prompt + predicted upper bound `hi`."""
        return len(self.request.prompt_token_ids) + self.request.hi
