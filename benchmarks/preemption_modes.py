"""Resume against restart preemption: what vLLM's way of preempting changes in the simulator.

Under `restart` (the papers' model) an evicted request loses its tokens and regenerates them;
under `resume` (vLLM, the default) it keeps them and re-prefills prompt + tokens once. This
replays the first N Azure conv requests at two loads (one the `vllm` policy keeps up with, one
where its queue grows) on `llama2-70b-a100x2` with `alpha` intervals, for every policy in both
modes, and reports mean / p99 latency, evictions and recomputed tokens, each policy's mean
relative to `vllm` in the same mode, computed in this process.

    python benchmarks/preemption_modes.py --limit 5000 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simulator.cost_model import load_cost_model
from simulator.experiment import ArrivalControl, build_workload
from simulator.run import simulate
from simulator.traces import load_trace

TRACE = Path(__file__).resolve().parent.parent / "data/traces/azure_conv_2023.csv"
POLICIES = ("vllm", "fcfs", "mcsf", "amin", "hsf")
MODES = ("restart", "resume")
COST_MODEL = "llama2-70b-a100x2"


def run(limit: int, loads: list[float], intervals: str) -> list[dict[str, Any]]:
    cost = load_cost_model(COST_MODEL)
    trace = load_trace(TRACE)
    rows = []
    cells = [(load, mode, policy) for load in loads for mode in MODES for policy in POLICIES]
    workloads = {
        load: build_workload(
            trace,
            intervals,
            seed=0,
            arrivals=ArrivalControl(rate_scale=load, limit=limit),
            kv_capacity_tokens=cost.kv_capacity_tokens,
        )
        for load in loads
    }
    for load, mode, policy in tqdm(cells, desc="simulations", unit="run"):
        s = simulate(workloads[load], policy, cost, preemption=mode).summary
        rows.append({"load": load, "preemption": mode, "policy": policy, **s})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| load | policy | preemption | mean e2e s | p99 e2e s | mean TTFT s | evictions "
        "| recomputed tokens | mean / vllm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {(r["load"], r["preemption"]): r["mean_e2e_s"] for r in rows if r["policy"] == "vllm"}
    for r in sorted(rows, key=lambda r: (r["load"], POLICIES.index(r["policy"]), r["preemption"])):
        ratio = r["mean_e2e_s"] / base[(r["load"], r["preemption"])]
        lines.append(
            f"| x{r['load']} | {r['policy']} | {r['preemption']} | {r['mean_e2e_s']:.2f} | "
            f"{r['p99_e2e_s']:.2f} | {r['mean_ttft_s']:.2f} | {r['evictions']} | "
            f"{r['recomputed_tokens']:,} | {ratio:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({r["load"] for r in rows})
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 4), squeeze=False)
    width = 0.38
    for ax, load in zip(axes[0], loads, strict=True):
        for k, mode in enumerate(MODES):
            cell = {r["policy"]: r for r in rows if r["load"] == load and r["preemption"] == mode}
            xs = [i + (k - 0.5) * width for i in range(len(POLICIES))]
            ax.bar(xs, [cell[p]["mean_e2e_s"] for p in POLICIES], width, label=f"{mode} mean")
            ax.scatter(
                xs,
                [cell[p]["p99_e2e_s"] for p in POLICIES],
                marker="_",
                s=200,
                color="black",
                label="p99" if k else None,
            )
        ax.set_xticks(range(len(POLICIES)), POLICIES)
        ax.set_title(f"{COST_MODEL}, arrivals x{load}")
        ax.set_ylabel("end-to-end latency (s)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--loads", default="0.05,0.1", help="comma-separated --rate-scale values")
    parser.add_argument("--intervals", default="alpha=0.5")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    rows = run(args.limit, loads, args.intervals)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preemption_modes.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    (args.out / "preemption_modes.md").write_text(table + "\n")
    plot(rows, args.out / "preemption_modes.png")
    print(table)


if __name__ == "__main__":
    main()
