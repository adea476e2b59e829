"""Table (markdown, stdout) and figure for docs/benchmarks/survivor_refine.json.

python benchmarks/survivor_refine_report.py docs/benchmarks
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    out = Path(sys.argv[1])
    data = json.loads((out / "survivor_refine.json").read_text())
    print(
        "| split | k | n | cov ladder | cov survivor | tau(lo) ladder | tau(lo) survivor "
        "| tau(hi) ladder | tau(hi) survivor | med width ladder | med width survivor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fig, axes = plt.subplots(1, len(data["offline"]), figsize=(5 * len(data["offline"]), 4))
    for ax, (name, rep) in zip(axes, data["offline"].items(), strict=True):
        ladder = {r["k"]: r for r in rep["ladder"]}
        for r in rep["survivor"]:
            old = ladder[r["k"]]
            if r["n"] < 50:
                continue
            print(
                f"| {name} | {r['k']} | {r['n']} | {old['coverage']:.3f} | {r['coverage']:.3f} "
                f"| {_f(old['kendall_tau_lo'])} | {_f(r['kendall_tau_lo'])} "
                f"| {_f(old['kendall_tau_hi'])} | {_f(r['kendall_tau_hi'])} "
                f"| {old['median_width']:.0f} | {r['median_width']:.0f} |"
            )
        for key, style in (("ladder", "--"), ("survivor", "-")):
            rows = [r for r in rep[key] if r["n"] >= 50]
            ks = [r["k"] for r in rows]
            ax.plot(
                ks,
                [r["kendall_tau_lo"] or 0.0 for r in rows],
                style,
                marker="o",
                label=f"tau(lo) {key}",
            )
            ax.plot(ks, [r["coverage"] for r in rows], style, marker="s", label=f"coverage {key}")
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("tokens generated k (survivors y > k)")
        ax.set_ylim(-0.1, 1.0)
        ax.axhline(0.9, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "survivor_refine.png", dpi=110)
    print()
    print("| refiner | policy | mean e2e s | p50 e2e s | p99 e2e s | mean queue s | evictions |")
    print("|---|---|---|---|---|---|---|")
    for world, doc in data["simulate"].items():
        for policy, r in doc["results"].items():
            print(
                f"| {world} | {policy} | {r['mean_e2e_s']:.3f} | {r['p50_e2e_s']:.3f} "
                f"| {r['p99_e2e_s']:.3f} | {r['mean_queue_s']:.3f} | {r['evictions']} |"
            )


if __name__ == "__main__":
    main()
