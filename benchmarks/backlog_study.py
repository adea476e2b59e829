"""A_min vs A_max vs H-SF on a backlog of real requests, unit slots vs a wall-clock cost model.

The papers' theory counts every iteration as one slot, so an eviction costs only the slots it
wastes. A real iteration that re-prefills a 1,000-token prompt costs far more. This study runs
the first N Azure conv requests as a backlog (all at t = 0, M = 16,492 tokens) under both the
`unit` model and `llama2-70b-a100x2`, for alpha in {1, 0.5, 0.25, 0.1}, and reports each
policy's mean latency relative to H-SF, computed in the same process.

    python benchmarks/backlog_study.py --limit 1000 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from simulator.cost_model import load_cost_model
from simulator.experiment import ArrivalControl, build_workload
from simulator.run import simulate
from simulator.traces import load_trace

TRACE = Path(__file__).resolve().parent.parent / "data/traces/azure_conv_2023.csv"
POLICIES = ("vllm", "fcfs", "mcsf", "amax", "amin", "hsf")
ALPHAS = (1.0, 0.5, 0.25, 0.1)
MODELS = ("unit", "llama2-70b-a100x2")


def run(limit: int) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        cost = load_cost_model(model, kv_tokens=16_492)
        for alpha in ALPHAS:
            intervals = "exact" if alpha == 1.0 else f"alpha={alpha}"
            workload = build_workload(
                load_trace(TRACE),
                intervals,
                seed=0,
                arrivals=ArrivalControl(backlog=True, limit=limit),
                kv_capacity_tokens=cost.kv_capacity_tokens,
            )
            for policy in POLICIES:
                s = simulate(workload, policy, cost, preemption="restart").summary
                rows.append(
                    {
                        "cost_model": model,
                        "alpha": alpha,
                        "policy": policy,
                        "mean_e2e_s": s["mean_e2e_s"],
                        "evictions": s["evictions"],
                    }
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for model in MODELS:
        unit = "iterations" if model == "unit" else "s"
        lines += [
            f"\n#### {model} (mean e2e in {unit}; ratio to H-SF; evictions)\n",
            "| alpha | " + " | ".join(POLICIES) + " |",
            "|---" * (len(POLICIES) + 1) + "|",
        ]
        for alpha in ALPHAS:
            mine = {
                r["policy"]: r for r in rows if r["cost_model"] == model and r["alpha"] == alpha
            }
            base = mine["hsf"]["mean_e2e_s"]
            cells = [
                f"{mine[p]['mean_e2e_s'] / base:.3f} ({mine[p]['evictions']})" for p in POLICIES
            ]
            lines.append(f"| {alpha} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(10, 3.8))
    for ax, model in zip(axes, MODELS, strict=True):
        base = {
            r["alpha"]: r["mean_e2e_s"]
            for r in rows
            if r["cost_model"] == model and r["policy"] == "hsf"
        }
        for policy in POLICIES[:-1]:
            pts = [
                (r["alpha"], r["mean_e2e_s"] / base[r["alpha"]])
                for r in rows
                if r["cost_model"] == model and r["policy"] == policy
            ]
            ax.plot(*zip(*pts, strict=True), marker="o", label=policy)
        ax.set_xscale("log")
        ax.set_title(f"backlog, {model}")
        ax.set_xlabel("alpha = lo/hi")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean latency / H-SF")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = run(args.limit)
    print(table(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "backlog.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "backlog.md").write_text(table(rows))
        plot(rows, args.out / "backlog.png")


if __name__ == "__main__":
    main()
