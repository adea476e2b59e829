"""Human-facing output of a simulation: a fixed-width table and a latency-distribution plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulator.run import SimResult

COLUMNS = (
    ("completed", "done", "{:d}"),
    ("rejected", "rej", "{:d}"),
    ("mean_e2e_s", "mean e2e", "{:.3f}"),
    ("p50_e2e_s", "p50 e2e", "{:.3f}"),
    ("p99_e2e_s", "p99 e2e", "{:.3f}"),
    ("mean_ttft_s", "mean ttft", "{:.3f}"),
    ("p99_ttft_s", "p99 ttft", "{:.3f}"),
    ("mean_tpot_s", "tpot", "{:.4f}"),
    ("throughput_tok_s", "tok/s", "{:.0f}"),
    ("evictions", "evict", "{:d}"),
    ("recomputed_tokens", "recomp tok", "{:d}"),
    ("mean_kv_utilization", "kv util", "{:.2f}"),
    ("sim_wall_s", "wall s", "{:.1f}"),
)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(summaries: dict[str, dict[str, Any]], *, baseline: str | None = None) -> str:
    """One row per policy; with `baseline`, a column of mean e2e relative to it."""
    header = ["policy", *(label for _, label, _ in COLUMNS)]
    base = summaries.get(baseline or "", {}).get("mean_e2e_s")
    if base:
        header.append(f"vs {baseline}")
    rows = [header]
    for name, summary in summaries.items():
        row = [name, *(_cell(summary.get(key), fmt) for key, _, fmt in COLUMNS)]
        if base:
            mean = summary.get("mean_e2e_s")
            row.append("-" if mean is None else f"{mean / base:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_latencies(results: dict[str, SimResult], path: str | Path, *, title: str = "") -> None:
    """ECDFs of end-to-end latency and TTFT, one line per policy, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, result in results.items():
        columns = result.log.per_request()
        for ax, key in zip(axes, ("e2e_s", "ttft_s"), strict=True):
            values = np.sort(columns[key][~np.isnan(columns[key])])
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
    for ax, label in zip(axes, ("end-to-end latency (s)", "time to first token (s)"), strict=True):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
