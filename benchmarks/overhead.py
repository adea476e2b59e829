"""Batch-formation overhead: one `form_batch` call with 10,000 waiting and 512 running requests.

Lengths are drawn from the Azure conv trace; the KV cache is sized so the running batch fills
90% of it, as in a loaded server. The loop then runs real iterations (requests finish, new ones
are admitted, the backlog stays near 10,000) and every `form_batch` call is timed. Reports the
first call (which fills the free 10% at once) and p50 / p99 over the following calls, with the
ratio to `fcfs` measured in the same process. `sorted-f` forms a group only when its previous
group is done, so most of its calls return at once; its first call is the group selection.

    python benchmarks/overhead.py --out docs/benchmarks/overhead.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from algorithms import (
    REGISTRY,
    BatchDecision,
    LengthInterval,
    SchedulerState,
    SchedulingLoop,
    WaitingRequest,
    make_batch_former,
)
from predictors.intervals import make_intervals
from simulator.cost_model import load_cost_model
from simulator.executor import SimulatedExecutor
from simulator.traces import load_trace

TRACE = Path(__file__).resolve().parent.parent / "data/traces/azure_conv_2023.csv"


def build_loop(policy: str, num_waiting: int, num_running: int, seed: int) -> SchedulingLoop:
    trace = load_trace(TRACE)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(trace), num_waiting + num_running, replace=True)
    prompts = trace.prompt_tokens[pick]
    outputs = trace.output_tokens[pick]
    lo, hi = make_intervals("alpha=0.5", outputs, seed=seed)
    generated = rng.integers(0, np.maximum(outputs[:num_running], 1))
    running_tokens = int((prompts[:num_running] + generated + 1).sum())
    capacity = int(running_tokens / 0.9)
    params = {"true_lengths": outputs} if policy == "hsf" else {}
    executor = SimulatedExecutor(outputs, load_cost_model("unit", kv_tokens=capacity))
    loop = SchedulingLoop(make_batch_former(policy, **params), executor, capacity)
    requests = [
        WaitingRequest(i, float(i), int(prompts[i]), LengthInterval(int(lo[i]), int(hi[i])))
        for i in range(num_waiting + num_running)
    ]
    loop.running.admit(requests[:num_running], 0, capacity)
    loop.running.generated = generated.astype(np.int64)
    loop.running.kv_tokens = int((prompts[:num_running] + generated).sum())
    for request in requests[num_running:]:
        loop.waiting.add(request)
    return loop


class TimedFormer:
    """Wraps a batch former and records how long each `form_batch` call takes."""

    def __init__(self, former: Any) -> None:
        self.former = former
        self.name, self.can_evict = former.name, former.can_evict
        self.clairvoyant = former.clairvoyant
        self.waiting_key, self.planning_length = former.waiting_key, former.planning_length
        self.samples_ms: list[float] = []

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        start = time.perf_counter()
        decision: BatchDecision = self.former.form_batch(state)
        self.samples_ms.append((time.perf_counter() - start) * 1e3)
        return decision


def time_policy(policy: str, repeats: int, seed: int) -> dict[str, float]:
    loop = build_loop(policy, 10_000, 512, seed)
    timed = TimedFormer(loop.former)
    loop.former = timed
    for _ in range(repeats + 1):
        loop.step(0.0)
    first_ms, samples = timed.samples_ms[0], timed.samples_ms[1:]
    return {
        "first_call_ms": first_ms,
        "p50_ms": float(np.percentile(samples, 50)),
        "p99_ms": float(np.percentile(samples, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {p: time_policy(p, args.repeats, args.seed) for p in REGISTRY}
    base = results["fcfs"]["p99_ms"]
    print(f"{'policy':<11} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99 / fcfs':>10}")
    for policy, r in results.items():
        r["p99_vs_fcfs"] = r["p99_ms"] / base
        print(
            f"{policy:<11} {r['first_call_ms']:9.3f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
            f"{r['p99_vs_fcfs']:10.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"waiting": 10_000, "running": 512, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
