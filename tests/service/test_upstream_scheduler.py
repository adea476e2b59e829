"""The `openai-upstream` engine's admissions: the policy's batch former at the gateway.

Each test builds upstreams with a known capacity (or none), queues flights and checks what
`UpstreamScheduler.dispatch` sends where: the former's order and admission rule, spreading by
load, no admission while the former would evict, the idle rule and the unknown-capacity rule.
"""

from __future__ import annotations

from typing import Any

import pytest

from algorithms import make_batch_former
from algorithms.state import SchedulerState
from algorithms.types import BatchDecision, WaitingRequest
from service.backends.upstream.flight import Flight
from service.backends.upstream.scheduler import UpstreamScheduler
from service.backends.upstream.state import Upstream, parse_load
from service.protocol import GenerationRequest


def flight(rid: str, lo: int, hi: int, prompt: int = 10, arrival_s: float = 0.0) -> Flight:
    request = GenerationRequest(
        rid, tuple(range(1, prompt + 1)), max_tokens=hi, lo=lo, hi=hi, arrival_s=arrival_s
    )
    return Flight(request)


def upstreams(*capacities: int | None, max_in_flight: int = 64) -> list[Upstream]:
    ups = [Upstream(i, f"http://u{i}", c, max_in_flight) for i, c in enumerate(capacities)]
    for up in ups:
        up.reachable = True
    return ups


def scheduler(policy: str, ups: list[Upstream], flights: list[Flight]) -> UpstreamScheduler:
    sched = UpstreamScheduler(make_batch_former(policy), ups)
    for f in flights:
        sched.queue(f)
    return sched


def sent(admitted: list[tuple[Flight, Upstream]]) -> list[tuple[str, int]]:
    return [(f.request.request_id, up.index) for f, up in admitted]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fcfs", ["a", "b", "c"]), ("vllm", ["a", "b", "c"]), ("sf", ["b", "a", "c"]),
     ("mcsf", ["b", "a", "c"]), ("amin", ["c", "a", "b"])],
)  # fmt: skip
def test_admissions_follow_the_formers_order(policy: str, expected: list[str]) -> None:
    ups = upstreams(10_000)
    flights = [flight("a", 5, 20, arrival_s=1.0), flight("b", 8, 10, arrival_s=2.0),
               flight("c", 1, 30, arrival_s=3.0)]  # fmt: skip
    sched = scheduler(policy, ups, flights)
    assert [rid for rid, _ in sent(sched.dispatch(0.0))] == expected
    assert len(sched) == 0 and ups[0].num_in_flight == 3


def test_the_formers_capacity_rule_decides_how_many_go() -> None:
    # four requests of prompt 10, interval [5, 50] on a 150-token upstream:
    # planning with hi (mcsf) fits two (2 x 60 = 120; a third would peak at 180);
    # planning with lo (amin) fits more (4 x 15 = 60 now and at lo)
    for policy, count in (("mcsf", 2), ("amin", 4)):
        ups = upstreams(150)
        sched = scheduler(policy, ups, [flight(c, 5, 50) for c in "abcd"])
        assert len(sched.dispatch(0.0)) == count, policy
        assert len(sched) == 4 - count


def test_requests_spread_over_upstreams_by_load() -> None:
    ups = upstreams(1000, 1000)
    sched = scheduler("sf", ups, [flight(c, 5, 40) for c in "abcd"])
    assert sorted(up for _, up in sent(sched.dispatch(0.0))) == [0, 0, 1, 1]


def test_no_admission_where_the_former_would_evict() -> None:
    ups = upstreams(100)
    sched = scheduler("amin", ups, [flight("a", 5, 80), flight("b", 5, 80)])
    assert len(sched.dispatch(0.0)) == 2  # lo-planning admits both: 2 x 15 tokens
    first, second = sched.running_flights(ups[0])
    first.num_tokens = second.num_tokens = 40  # 2 x (10 + 40 + 1) > 100: amin evicts
    sched.queue(flight("c", 1, 1, prompt=1))
    assert sched.dispatch(1.0) == [] and len(sched) == 1
    assert sched.remove("a") and sched.remove("b")  # they finished: room again
    assert sent(sched.dispatch(2.0)) == [("c", 0)]


def test_an_idle_upstream_takes_a_request_larger_than_its_capacity() -> None:
    ups = upstreams(50)
    flights = [flight("big", 10, 100, arrival_s=1.0), flight("big2", 10, 100, arrival_s=2.0)]
    sched = scheduler("fcfs", ups, flights)
    assert sent(sched.dispatch(0.0)) == [("big", 0)]  # fcfs would admit neither: it is idle
    assert sched.dispatch(1.0) == []  # busy now: the former decides, and big2 does not fit


def test_unknown_capacity_takes_the_formers_first_under_the_in_flight_cap() -> None:
    ups = upstreams(None, max_in_flight=2)
    sched = scheduler("sf", ups, [flight("a", 5, 50), flight("b", 5, 10), flight("c", 5, 5)])
    assert sent(sched.dispatch(0.0)) == [("c", 0), ("b", 0)]
    ups[0].reported = parse_load("vllm:kv_cache_usage_perc 0.95\n")
    assert sched.remove("c") and sched.dispatch(1.0) == []  # above the KV watermark


def test_remove_and_requeue() -> None:
    ups = upstreams(1000)
    sched = scheduler("fcfs", ups, [flight("a", 5, 10)])
    with pytest.raises(ValueError, match="already queued"):
        sched.queue(flight("a", 5, 10))
    assert sched.is_waiting("a") and sched.remove("a") and not sched.remove("a")
    sched.queue(flight("a", 5, 10))
    assert sent(sched.dispatch(0.0)) == [("a", 0)] and not sched.is_waiting("a")
    assert sched.remove("a") and len(sched.running(ups[0])) == 0


class BrokenFormer:
    """mcsf's order and contract, but form_batch raises (a bug in a policy)."""

    def __init__(self) -> None:
        self.inner = make_batch_former("mcsf")
        self.name, self.can_evict, self.clairvoyant = "broken", False, False

    def waiting_key(self, request: WaitingRequest) -> Any:
        return self.inner.waiting_key(request)

    def planning_length(self, request: WaitingRequest) -> int:
        return self.inner.planning_length(request)

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        raise IndexError("bug")


def test_a_former_that_raises_strands_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ups = upstreams(1000)
    sched = UpstreamScheduler(BrokenFormer(), ups)
    for f in (flight("a", 5, 50), flight("b", 5, 10)):
        sched.queue(f)
    assert sent(sched.dispatch(0.0)) == [("b", 0)]  # idle: the former's first, shortest hi
    assert "broken failed" in caplog.text
    assert sched.dispatch(1.0) == []  # busy: the broken former admits nothing
    assert sched.remove("b") and sent(sched.dispatch(2.0)) == [("a", 0)]
