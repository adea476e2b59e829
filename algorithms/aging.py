"""Linear aging: a shortest-first waiting order with a bound on how long a request can starve.

Ranking waiting requests by `remaining - wait_weight * (now - arrival)` (highest-response-ratio
style aging, in tokens) changes with the clock, but the clock term is the same for everyone, so
the order equals that of the static key `remaining + wait_weight * arrival_s`. A static key is
what the loop's sorted waiting queue needs: it is computed once when a request (re)enters the
queue, so admission walks only a prefix of the queue.

Starvation bound. With remaining estimate r_A (tokens, at the time A entered the queue), A is
ranked behind a request B that arrived later only if B arrived less than r_A / wait_weight
seconds after A (strictly: a_B < a_A + (r_A - r_B) / wait_weight). So once that window has
passed, no newcomer is ever placed ahead of A: A waits at most for the requests that arrived
before a_A + r_A / wait_weight. `wait_weight = 0` is pure shortest-expected-first (no bound);
a very large weight is first-come first-served.
"""

from __future__ import annotations

import math

from algorithms.types import WaitingRequest

AgedKey = tuple[float, float, int]


def check_wait_weight(wait_weight: float) -> float:
    if not (math.isfinite(wait_weight) and wait_weight >= 0.0):
        raise ValueError(f"wait_weight must be finite and >= 0, got {wait_weight}")
    return float(wait_weight)


def aged_key(request: WaitingRequest, remaining_tokens: float, wait_weight: float) -> AgedKey:
    """Sort key (smaller first): remaining + wait_weight * arrival, ties by arrival then id."""
    return (remaining_tokens + wait_weight * request.arrival_s, request.arrival_s, request.id)


def overtake_window_s(remaining_tokens: float, wait_weight: float) -> float:
    """How long after a request's arrival a newcomer can still be ranked ahead of it."""
    return math.inf if wait_weight == 0.0 else remaining_tokens / wait_weight
