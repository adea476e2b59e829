"""Concurrent requests' predictions share one predictor call; failures reach every waiter."""

from __future__ import annotations

import asyncio

import pytest

from service.gateway.predict_batcher import IntervalBatcher
from tests.service.fakes import FakePredictor


def test_requests_prepared_together_are_predicted_in_one_batch() -> None:
    predictor = FakePredictor(5, 50)
    batcher = IntervalBatcher(predictor, max_batch=64)

    async def main() -> list[tuple[int, int]]:
        calls = [batcher.predict(f"p{i}", 3 + i, "m", 10 + 10 * i) for i in range(10)]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(main())
    assert len(predictor.batches) == 1 and len(predictor.batches[0]) == 10
    assert results == [(5, min(50, 10 + 10 * i)) for i in range(10)]


def test_a_full_batch_flushes_at_once() -> None:
    predictor = FakePredictor(1, 2)
    batcher = IntervalBatcher(predictor, max_batch=4)

    async def main() -> None:
        await asyncio.gather(*(batcher.predict("p", 1, "m", 8) for _ in range(10)))

    asyncio.run(main())
    assert [len(b) for b in predictor.batches] == [4, 4, 2]


def test_a_failing_predictor_fails_every_waiting_request() -> None:
    class Broken(FakePredictor):
        def predict(self, batch):  # type: ignore[no-untyped-def]
            raise ValueError("bad model")

    batcher = IntervalBatcher(Broken(1, 2))

    async def main() -> list[BaseException | tuple[int, int]]:
        calls = (batcher.predict("p", 1, "m", 8) for _ in range(3))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))
    with pytest.raises(ValueError):
        asyncio.run(batcher.predict("p", 1, "m", 8))
