"""Per-request timings recorded during a simulation, and the per-policy summary of issue #2.

Times are seconds (iterations under the `unit` cost model). A request's TTFT is measured to the
first time its first token came out (a later restart after eviction does not reset it), its
end-to-end latency from arrival to its final token, its queueing delay from arrival to its first
admission. Rejected requests have no timings and are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from algorithms.loop import StepOutcome

FloatArray = NDArray[np.float64]


@dataclass(slots=True)
class RequestLog:
    """Mutable per-request arrays indexed by request id, filled as the loop reports steps."""

    arrival_s: FloatArray
    output_tokens: NDArray[np.int64]
    first_start_s: FloatArray = field(init=False)
    first_token_s: FloatArray = field(init=False)
    completion_s: FloatArray = field(init=False)
    evictions: NDArray[np.int64] = field(init=False)
    rejected: NDArray[np.bool_] = field(init=False)
    peak_kv_tokens: int = 0
    kv_token_seconds: float = 0.0
    num_iterations: int = 0
    recomputed_tokens: int = 0

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        self.first_start_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.completion_s = np.full(n, np.nan)
        self.evictions = np.zeros(n, dtype=np.int64)
        self.rejected = np.zeros(n, dtype=bool)

    def record(self, now_s: float, outcome: StepOutcome) -> None:
        end_s = now_s + outcome.elapsed_s
        if outcome.admitted:
            ids = np.asarray(outcome.admitted, dtype=np.int64)
            self.first_start_s[ids] = np.fmin(self.first_start_s[ids], now_s)
        if outcome.first_tokens:
            ids = np.asarray(outcome.first_tokens, dtype=np.int64)
            self.first_token_s[ids] = np.fmin(self.first_token_s[ids], end_s)
        if outcome.evicted:
            self.evictions[np.asarray(outcome.evicted, dtype=np.int64)] += 1
        if outcome.finished:
            self.completion_s[np.asarray(outcome.finished, dtype=np.int64)] = end_s
        if outcome.rejected:
            self.rejected[np.asarray(outcome.rejected, dtype=np.int64)] = True
        self.peak_kv_tokens = max(self.peak_kv_tokens, outcome.kv_tokens)
        self.kv_token_seconds += outcome.kv_tokens * outcome.elapsed_s
        self.num_iterations += 1
        self.recomputed_tokens += outcome.recomputed_tokens

    def per_request(self) -> dict[str, NDArray[Any]]:
        """Columns for a per-request table: e2e, TTFT, TPOT, queueing delay, evictions."""
        e2e = self.completion_s - self.arrival_s
        ttft = self.first_token_s - self.arrival_s
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(
                self.output_tokens > 1,
                (self.completion_s - self.first_token_s) / (self.output_tokens - 1),
                np.nan,
            )
        return {
            "e2e_s": e2e,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "queue_s": self.first_start_s - self.arrival_s,
            "evictions": self.evictions,
            "rejected": self.rejected,
        }


def _stat(values: FloatArray, kind: str) -> float | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    if kind == "mean":
        return float(values.mean())
    return float(np.percentile(values, float(kind)))


def summarize(log: RequestLog, kv_capacity_tokens: int, sim_wall_s: float) -> dict[str, Any]:
    """The per-policy result object written under `results` in the simulate JSON."""
    cols = log.per_request()
    done = ~np.isnan(log.completion_s)
    e2e = cols["e2e_s"][done]
    start = float(log.arrival_s.min()) if len(log.arrival_s) else 0.0
    makespan = float(log.completion_s[done].max() - start) if done.any() else 0.0
    tokens = int(log.output_tokens[done].sum())
    return {
        "completed": int(done.sum()),
        "rejected": int(log.rejected.sum()),
        "total_latency_s": float(e2e.sum()),
        "mean_e2e_s": _stat(e2e, "mean"),
        "p50_e2e_s": _stat(e2e, "50"),
        "p90_e2e_s": _stat(e2e, "90"),
        "p99_e2e_s": _stat(e2e, "99"),
        "mean_ttft_s": _stat(cols["ttft_s"][done], "mean"),
        "p99_ttft_s": _stat(cols["ttft_s"][done], "99"),
        "mean_tpot_s": _stat(cols["tpot_s"][done], "mean"),
        "mean_queue_s": _stat(cols["queue_s"][done], "mean"),
        "throughput_rps": float(done.sum() / makespan) if makespan > 0 else None,
        "throughput_tok_s": float(tokens / makespan) if makespan > 0 else None,
        "evictions": int(log.evictions.sum()),
        "recomputed_tokens": log.recomputed_tokens,
        "peak_kv_tokens": log.peak_kv_tokens,
        "mean_kv_utilization": (
            log.kv_token_seconds / (makespan * kv_capacity_tokens) if makespan > 0 else None
        ),
        "makespan_s": makespan,
        "iterations": log.num_iterations,
        "sim_wall_s": sim_wall_s,
    }
