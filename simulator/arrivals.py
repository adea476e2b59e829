"""Arrival control for a replayed trace: keep, compress, replace by Poisson, or collapse to t=0.

Experiments scale a real trace's load or swap its arrival process (Poisson
arrivals at a chosen rate, or an all-at-t=0 backlog). Invariant: the result is a valid `Trace`
with the same requests in the same order; only ``arrival_s`` (and, with ``limit``, the length)
changes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from simulator.traces import Trace


def with_arrivals(
    trace: Trace,
    *,
    rate_scale: float | None = None,
    rate: float | None = None,
    backlog: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> Trace:
    """Return ``trace`` with its arrival times set as asked.

    Args:
        trace: the loaded trace.
        rate_scale: divide the trace's own arrival times (hence every inter-arrival gap) by
            this factor; 6.0 replays the trace at 6x its load.
        rate: replace arrivals by a Poisson process of ``rate`` requests per second: the first
            request arrives at 0.0 and the next n-1 gaps are exponential with mean 1/rate,
            drawn from ``numpy.random.default_rng(seed)`` (same seed, same arrivals).
        backlog: every request arrives at 0.0 (the offline, all-at-once setting).
        limit: keep only the first ``limit`` requests (in arrival order); applied before
            anything else. A limit above the trace length keeps every request.
        seed: seed for ``rate``; unused otherwise.

    At most one of ``rate_scale``, ``rate`` and ``backlog`` may be given. With none, the
    trace's own times are kept, which a lengths-only trace does not have.

    Raises:
        ValueError: more than one mode, a non-positive or non-finite ``rate_scale``/``rate``,
            ``limit`` < 1, or a lengths-only trace without ``rate`` or ``backlog``.
    """
    modes = {"rate_scale": rate_scale is not None, "rate": rate is not None, "backlog": backlog}
    chosen = [name for name, given in modes.items() if given]
    if len(chosen) > 1:
        raise ValueError(f"give at most one of rate_scale, rate, backlog; got {', '.join(chosen)}")
    scale = None if rate_scale is None else _positive("rate_scale", rate_scale)
    rate_per_s = None if rate is None else _positive("rate", rate)
    if limit is not None:
        trace = _first(trace, limit)
    if backlog:
        return dataclasses.replace(trace, arrival_s=np.zeros(len(trace)))
    if rate_per_s is not None:
        gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, len(trace) - 1)
        return dataclasses.replace(trace, arrival_s=np.concatenate(([0.0], np.cumsum(gaps_s))))
    if not trace.has_arrivals:
        raise ValueError(
            f"{trace.source} is a lengths-only trace (no arrival times); replay it with "
            "--backlog (all requests at t=0) or --rate R (Poisson arrivals, R req/s)"
        )
    if scale is not None:
        return dataclasses.replace(trace, arrival_s=trace.arrival_s / scale)
    return trace


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _first(trace: Trace, limit: int) -> Trace:
    """The first ``limit`` requests of ``trace``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    if limit >= len(trace):
        return trace
    return dataclasses.replace(
        trace,
        arrival_s=trace.arrival_s[:limit],
        prompt_tokens=trace.prompt_tokens[:limit],
        output_tokens=trace.output_tokens[:limit],
        lo=None if trace.lo is None else trace.lo[:limit],
        hi=None if trace.hi is None else trace.hi[:limit],
        prompts=None if trace.prompts is None else trace.prompts[:limit],
        models=None if trace.models is None else trace.models[:limit],
    )
