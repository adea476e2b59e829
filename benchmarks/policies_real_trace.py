"""Every policy on the real Azure conv trace: two cost models x two loads x interval widths.

For each cost model, one load where the `vllm` baseline keeps up and one where its queue grows
(chosen with --rate-scale; see docs/benchmarks.md), and alpha in {1, 0.5, 0.25, 0.1}: mean and
p99 end-to-end latency of every policy and its ratio to `hsf` (same workload, same process
family). Writes a JSON of all cells, a markdown table and one PNG per cost model.

    python benchmarks/policies_real_trace.py --jobs 2 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simulator.cost_model import load_cost_model
from simulator.experiment import ArrivalControl, build_workload
from simulator.run import simulate
from simulator.traces import load_trace

TRACE = Path(__file__).resolve().parent.parent / "data/traces/azure_conv_2023.csv"
LOADS = {"llama3-8b-h100": (1.5, 3.0), "llama2-70b-a100x2": (0.05, 0.1)}
ALPHAS = (1.0, 0.5, 0.25, 0.1)
POLICIES = ("vllm", "fcfs", "sf", "mcsf", "sorted-f", "sorted-f-c", "amax", "amin")
KEYS = ("mean_e2e_s", "p99_e2e_s", "mean_ttft_s", "evictions", "rejected", "sim_wall_s")


def run_cell(cell: tuple[str, float, float, str]) -> dict[str, Any]:
    cost_name, scale, alpha, policy = cell
    cost_model = load_cost_model(cost_name)
    intervals = "exact" if alpha == 1.0 else f"alpha={alpha}"
    workload = build_workload(
        load_trace(TRACE),
        intervals,
        seed=0,
        arrivals=ArrivalControl(rate_scale=scale),
        kv_capacity_tokens=cost_model.kv_capacity_tokens,
    )
    summary = simulate(workload, policy, cost_model).summary
    return {
        "cost_model": cost_name,
        "rate_scale": scale,
        "alpha": alpha,
        "policy": policy,
        **{k: summary[k] for k in KEYS},
    }


def cells(alphas: tuple[float, ...]) -> list[tuple[str, float, float, str]]:
    out = []
    for cost_name, scales in LOADS.items():
        for scale in scales:
            out.append((cost_name, scale, 1.0, "hsf"))  # true lengths: independent of alpha
            out += [(cost_name, scale, a, p) for a in alphas for p in POLICIES]
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    hsf = {(r["cost_model"], r["rate_scale"]): r for r in rows if r["policy"] == "hsf"}
    lines = []
    for (cost_name, scale), base in hsf.items():
        lines += [
            f"\n### {cost_name}, rate scale {scale}\n",
            f"H-SF (true lengths): mean {base['mean_e2e_s']:.2f} s, "
            f"p99 {base['p99_e2e_s']:.2f} s\n",
            "| policy | alpha | mean e2e s | p99 e2e s | mean / H-SF | p99 / H-SF "
            "| evictions | rejected |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if (r["cost_model"], r["rate_scale"]) != (cost_name, scale) or r["policy"] == "hsf":
                continue
            lines.append(
                f"| {r['policy']} | {r['alpha']} | {r['mean_e2e_s']:.2f} | {r['p99_e2e_s']:.2f} "
                f"| {r['mean_e2e_s'] / base['mean_e2e_s']:.2f} "
                f"| {r['p99_e2e_s'] / base['p99_e2e_s']:.2f} | {r['evictions']} "
                f"| {r['rejected']} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [(c, s) for c, scales in LOADS.items() for s in scales]
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 4.2), sharey=False)
    for ax, (cost_name, scale) in zip(axes, loads, strict=True):
        mine = [r for r in rows if (r["cost_model"], r["rate_scale"]) == (cost_name, scale)]
        base = next(r for r in mine if r["policy"] == "hsf")["mean_e2e_s"]
        for policy in POLICIES:
            pts = sorted(
                (r["alpha"], r["mean_e2e_s"] / base) for r in mine if r["policy"] == policy
            )
            ax.plot([a for a, _ in pts], [v for _, v in pts], marker="o", label=policy)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interval tightness alpha = lo/hi")
        ax.set_title(f"{cost_name} x{scale}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean e2e latency / H-SF")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    todo = cells(ALPHAS)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(tqdm(pool.map(run_cell, todo), total=len(todo), unit="run"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policies.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "policies.md").write_text(markdown(rows))
    plot(rows, args.out / "policies.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
