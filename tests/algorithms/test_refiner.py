"""The loop applies an interval refiner to running requests (that the formers plan with it, end
to end, is tested in the simulation tests: test_refiner_runs.py)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from algorithms import SchedulingLoop, make_batch_former
from tests.algorithms.fake_executor import FakeExecutor
from tests.factories import CASE_3, make_jobs
from tests.jobs import Jobs

IntArray = NDArray[np.int64]


class SurvivorRefiner:
    """lo <- max(lo, g + 1); hi <- max(hi, 2g) capped: what a calibrated ladder does, roughly."""

    def __init__(self) -> None:
        self.calls = 0

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        self.calls += 1
        assert np.all(generated >= 1)
        new_lo = np.maximum(lo, generated + 1)
        new_hi = np.minimum(np.maximum(np.maximum(hi, 2 * generated), new_lo), max_tokens)
        return np.minimum(new_lo, new_hi), new_hi


def reference_case_3() -> tuple[Jobs, int]:
    workload = make_jobs(prompts=CASE_3["prompts"], outputs=CASE_3["outputs"], interval=(2, 8))
    return workload, int(CASE_3["capacity"])  # type: ignore[call-overload]


def test_refined_bounds_reach_running_and_evicted_requests() -> None:
    """Running rows carry lo >= g + 1 after refinement, and an evicted request keeps it."""
    workload, capacity = reference_case_3()
    refiner = SurvivorRefiner()
    loop = SchedulingLoop(
        make_batch_former("amin"),
        FakeExecutor(workload.output_tokens),
        capacity,
        refiner=refiner,
    )
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    evictions = 0
    while loop.has_work:
        outcome = loop.step(0.0)
        evictions += len(outcome.evicted)
        running = loop.running
        started = running.generated > 1  # refined at the start of this step with g >= 1
        assert np.all(running.lo[started] >= running.generated[started])
        for request in loop.waiting:
            if request.num_evictions:
                assert request.interval.lo >= request.max_generated + 1
    assert refiner.calls > 0 and evictions > 0
