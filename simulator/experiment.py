"""One simulate run as the CLI and the benchmarks describe it: trace -> workload -> policies.

`build_workload` applies arrival control and interval generation to a loaded trace;
`run_policies` replays it through several batch formers and returns the JSON document of
issue #2 (`trace`, `requests`, `cost_model`, `kv_capacity_tokens`, `intervals`, `seed`,
`results`), with a progress bar over completed requests when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from algorithms.protocols import IntervalRefiner
from predictors.base import IntervalPredictor, PromptBatch
from predictors.intervals import make_intervals
from predictors.online import OnlineIntervals
from simulator.arrivals import with_arrivals
from simulator.cost_model import CostModel
from simulator.run import SimResult, Workload, simulate
from simulator.traces import Trace


@dataclass(frozen=True, slots=True)
class ArrivalControl:
    """At most one of rate_scale / rate / backlog; limit keeps the first N requests."""

    rate_scale: float | None = None
    rate: float | None = None
    backlog: bool = False
    limit: int | None = None


MODEL_PREFIX = "model="
ONLINE_OPTION = "online"


def parse_model_spec(intervals: str) -> tuple[str, bool]:
    """`model=PATH[,online]` -> (PATH, online); ValueError on any other option."""
    path, *options = (part.strip() for part in intervals.removeprefix(MODEL_PREFIX).split(","))
    unknown = [o for o in options if o != ONLINE_OPTION]
    if not path or unknown or len(options) > 1:
        raise ValueError(
            f"interval spec {intervals!r}: expected model=PATH|default, optionally followed by "
            f"',{ONLINE_OPTION}' (online recalibration as in kvsched serve)"
        )
    return path, bool(options)


def interval_model(intervals: str) -> IntervalPredictor | None:
    """The learned predictor named by `--intervals model=PATH` (or `model=default`), else None."""
    if not intervals.startswith(MODEL_PREFIX):
        return None
    from predictors.default import load_predictor  # LightGBM loads only when asked for

    predictor: IntervalPredictor = load_predictor(parse_model_spec(intervals)[0])
    return predictor


def _prompt_batch(trace: Trace, kv_capacity_tokens: int | None) -> PromptBatch:
    if trace.prompts is None:
        raise ValueError(
            f"{trace.source}: --intervals model=... needs prompt texts in the trace "
            "(a canonical JSONL trace with a 'prompt' field on every record)"
        )
    cap = (kv_capacity_tokens or 1 << 30) - trace.prompt_tokens
    return PromptBatch(
        trace.prompts,
        np.array(trace.prompt_tokens, dtype=np.int64),
        trace.models or ("",) * len(trace),
        np.maximum(cap, 1).astype(np.int64),
    )


def predicted_intervals(
    trace: Trace, predictor: IntervalPredictor, kv_capacity_tokens: int | None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Ask a learned predictor for every request's interval; the trace must carry prompts."""
    return predictor.predict(_prompt_batch(trace, kv_capacity_tokens))


def build_workload(
    trace: Trace,
    intervals: str,
    *,
    seed: int,
    arrivals: ArrivalControl = ArrivalControl(),
    kv_capacity_tokens: int | None = None,
    predictor: IntervalPredictor | None = None,
) -> Workload:
    """Arrival times per `arrivals`, then intervals per `intervals` (seeded), or from
    `predictor` when `intervals` is `model=...`.

    With `kv_capacity_tokens` M, `hi` is capped at M - prompt for every request that can fit
    at all: no request can generate more on this KV cache (as vLLM clamps `max_tokens` to
    `max_model_len`), so the cap never excludes a true length. Requests with
    prompt + output > M keep their interval and are rejected by every policy alike.
    """
    trace = with_arrivals(
        trace,
        rate_scale=arrivals.rate_scale,
        rate=arrivals.rate,
        backlog=arrivals.backlog,
        limit=arrivals.limit,
        seed=seed,
    )
    online: OnlineIntervals | None = None
    if intervals.startswith(MODEL_PREFIX):
        predictor = predictor or interval_model(intervals)
        assert predictor is not None
        batch = _prompt_batch(trace, kv_capacity_tokens)
        if parse_model_spec(intervals)[1]:  # the intervals before anything is learned
            online = OnlineIntervals.predict(predictor, batch)
            lo, hi = online.calibrator().apply(online.base_lo, online.base_hi, online.max_tokens)
        else:
            lo, hi = predictor.predict(batch)
    else:
        given = (trace.lo, trace.hi) if trace.lo is not None and trace.hi is not None else None
        lo, hi = make_intervals(intervals, trace.output_tokens, seed=seed, given=given)
    if kv_capacity_tokens is not None:
        room = kv_capacity_tokens - trace.prompt_tokens
        fits = trace.output_tokens <= room
        hi = np.where(fits, np.minimum(hi, np.maximum(room, lo)), hi)
    return Workload(
        np.array(trace.arrival_s, dtype=np.float64),
        np.array(trace.prompt_tokens, dtype=np.int64),
        np.array(trace.output_tokens, dtype=np.int64),
        lo,
        hi,
        online,
    )


@dataclass(slots=True)
class Experiment:
    """Everything needed to compare policies on one workload."""

    workload: Workload
    cost_model: CostModel
    trace_name: str
    intervals: str
    seed: int
    max_batch_size: int | None = None
    max_num_batched_tokens: int | None = None
    refiner: IntervalRefiner | None = None
    preemption: str = "resume"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, policies: Sequence[str], *, show_progress: bool = False) -> dict[str, SimResult]:
        results: dict[str, SimResult] = {}
        for policy in policies:
            with tqdm(
                total=len(self.workload),
                desc=f"{policy:>10}",
                unit="req",
                disable=not show_progress,
                leave=True,
            ) as bar:
                results[policy] = simulate(
                    self.workload,
                    policy,
                    self.cost_model,
                    params=self.params.get(policy),
                    max_batch_size=self.max_batch_size,
                    max_num_batched_tokens=self.max_num_batched_tokens,
                    refiner=self.refiner,
                    preemption=self.preemption,
                    progress=bar.update,
                )
        return results

    def document(self, results: dict[str, SimResult]) -> dict[str, Any]:
        """The `--json` document of issue #2."""
        return {
            "trace": self.trace_name,
            "requests": len(self.workload),
            "cost_model": self.cost_model.to_dict(),
            "kv_capacity_tokens": self.cost_model.kv_capacity_tokens,
            "intervals": self.intervals,
            "seed": self.seed,
            "max_batch_size": self.max_batch_size,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "preemption": self.preemption,
            "results": {name: result.summary for name, result in results.items()},
        }
