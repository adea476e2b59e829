"""Simulator speed: the whole Azure conv trace (19,366 requests) under each given policy.

Reports wall time, iterations, and simulated output tokens per wall-clock second, with the
ratio of each policy's wall time to the first one's (run in the same process). Target: <= 20 s
for `amin` on one core.

    python benchmarks/sim_speed.py --policies fcfs,amin --out docs/benchmarks/sim_speed.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulator.cost_model import load_cost_model
from simulator.experiment import ArrivalControl, build_workload
from simulator.run import simulate
from simulator.traces import load_trace

TRACE = Path(__file__).resolve().parent.parent / "data/traces/azure_conv_2023.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="fcfs,amin,vllm")
    parser.add_argument("--cost-model", default="llama3-8b-h100")
    parser.add_argument("--rate-scale", type=float, default=3.0)
    parser.add_argument("--intervals", default="alpha=0.5")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cost_model = load_cost_model(args.cost_model)
    workload = build_workload(
        load_trace(TRACE),
        args.intervals,
        seed=0,
        arrivals=ArrivalControl(args.rate_scale),
        kv_capacity_tokens=cost_model.kv_capacity_tokens,
    )
    rows = {}
    for policy in args.policies.split(","):
        result = simulate(workload, policy, cost_model)
        s = result.summary
        tokens = int(workload.output_tokens.sum())
        rows[policy] = {
            "wall_s": s["sim_wall_s"],
            "iterations": s["iterations"],
            "simulated_tokens_per_wall_s": tokens / s["sim_wall_s"],
            "us_per_iteration": 1e6 * s["sim_wall_s"] / s["iterations"],
        }
    first = next(iter(rows.values()))["wall_s"]
    print(
        f"{'policy':<11} {'wall s':>7} {'iters':>8} {'us/iter':>8} {'sim tok/s':>10} {'ratio':>6}"
    )
    for policy, r in rows.items():
        r["wall_vs_first"] = r["wall_s"] / first
        print(
            f"{policy:<11} {r['wall_s']:7.2f} {r['iterations']:8d} {r['us_per_iteration']:8.1f} "
            f"{r['simulated_tokens_per_wall_s']:10.0f} {r['wall_vs_first']:6.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"trace": str(TRACE.name), "requests": len(workload), **vars(args)}
        meta["out"] = str(args.out)
        args.out.write_text(json.dumps({"setup": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
