"""Batch concurrent requests' interval predictions into one predictor call.

A LightGBM prediction for one prompt costs about as much as for dozens (per-call overhead
dominates), so the gateway predicts the requests prepared in the same event-loop tick together.
No request waits for a timer: the batch is flushed by `call_soon`, right after the handlers that
are ready now have queued their prompts, or at once when `max_batch` prompts are waiting.
"""

from __future__ import annotations

import asyncio

import numpy as np

from predictors.base import IntervalPredictor, PromptBatch

Pending = tuple[str, int, str, int, "asyncio.Future[tuple[int, int]]"]


class IntervalBatcher:
    """`await predict(...)` -> (lo, hi) of one request, computed in a shared batch."""

    def __init__(self, predictor: IntervalPredictor, *, max_batch: int = 64) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self._pending: list[Pending] = []

    async def predict(
        self, prompt: str, prompt_tokens: int, model: str, max_tokens: int
    ) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, int]] = loop.create_future()
        self._pending.append((prompt, prompt_tokens, model, max_tokens, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch = PromptBatch(
            tuple(p[0] for p in pending),
            np.array([p[1] for p in pending], dtype=np.int64),
            tuple(p[2] for p in pending),
            np.array([p[3] for p in pending], dtype=np.int64),
        )
        try:
            lo, hi = self.predictor.predict(batch)
        except Exception as exc:  # each waiting request sees the failure and falls back
            for *_, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for i, (*_, future) in enumerate(pending):
            if not future.done():
                future.set_result((int(lo[i]), int(hi[i])))
