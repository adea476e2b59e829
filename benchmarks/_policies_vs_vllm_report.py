"""How `policies_vs_vllm.py` judges and shows its results: the interval worlds, the issue's
targets, the markdown tables (summary, per setup, targets) and the ratio-against-load plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from algorithms import CLAIRVOYANT

WORLDS = ("learned", "oracle")
# at and past saturation: mean and p99 against vllm; below it: never worse than this
TARGET_MEAN, TARGET_P99, TARGET_LIGHT = 0.70, 1.0, 1.02


def fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(doc: dict[str, Any], world: str = "learned") -> str:
    """Mean / p99 end-to-end latency over vllm's, per setup and load, one column per policy."""
    policies = [p for p in doc["settings"]["policies"] if p != "vllm"]
    lines = [
        "| trace | cost model | load | " + " | ".join(policies) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in policies) + " |",
    ]
    for s in doc["setups"]:
        for load in s["loads"]:
            res = load[world]
            cells = [
                f"{res[p]['mean_vs_vllm']:.2f} / {res[p]['p99_vs_vllm']:.2f}" for p in policies
            ]
            lines.append(
                f"| {s['trace']} | {s['cost_model']} | {load['factor']:g}x "
                f"({load['rate_rps']:.2f} req/s) | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


DETAIL_HEADER = (
    "| load | world | policy | mean e2e s | p50 | p99 | mean TTFT s | p50 | p99 | goodput req/s "
    "| SLO met | evictions | recomputed tokens | KV util | mean / vllm | p99 / vllm | gap closed |"
)


def detail_rows(setup: dict[str, Any]) -> list[str]:
    lines = [DETAIL_HEADER, "| " + " | ".join("---" for _ in range(17)) + " |"]
    for load in setup["loads"]:
        for world in WORLDS:
            for policy, r in load[world].items():
                if policy in CLAIRVOYANT and world != "learned":
                    continue
                label = "true lengths" if policy in CLAIRVOYANT else world
                lines.append(
                    f"| {load['factor']:g}x | {label} | {policy} | {fmt(r['mean_e2e_s'])} "
                    f"| {fmt(r['p50_e2e_s'])} | {fmt(r['p99_e2e_s'])} | {fmt(r['mean_ttft_s'])} "
                    f"| {fmt(r['p50_ttft_s'])} | {fmt(r['p99_ttft_s'])} "
                    f"| {fmt(r['goodput_rps'])} | {r['slo_attainment']:.1%} | {r['evictions']} "
                    f"| {r['recomputed_tokens']:,} | {fmt(r['mean_kv_utilization'])} "
                    f"| {r['mean_vs_vllm']:.3f} | {r['p99_vs_vllm']:.3f} "
                    f"| {fmt(r['gap_closed'])} |"
                )
    return lines


def targets_table(targets: dict[str, Any]) -> str:
    lines = [
        "| trace | cost model | load | best by mean | mean / vllm (<= 0.70) | p99 / vllm (<= 1.0) "
        "| policies meeting both |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in targets["heavy"]:
        lines.append(
            f"| {h['trace']} | {h['cost_model']} | {h['factor']:g}x | {h['best']} "
            f"| {h['mean_vs_vllm']:.3f} {'met' if h['mean_met'] else 'missed'} "
            f"| {h['p99_vs_vllm']:.3f} {'met' if h['p99_met'] else 'missed'} "
            f"| {', '.join(h['policies_meeting_both']) or 'none'} |"
        )
    lines += [
        "",
        "| policy | worst mean / vllm below saturation (<= 1.02) | where "
        "| worst p99 / vllm below saturation (<= 1.02) | where |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in dict.fromkeys(x["policy"] for x in targets["light"]):
        mine = [x for x in targets["light"] if x["policy"] == p]
        cells = []
        for key in ("mean", "p99"):
            w = max(mine, key=lambda x: x[f"{key}_vs_vllm"])
            verdict = "met" if w[f"{key}_met"] else "missed"
            cells.append(
                f"{w[f'{key}_vs_vllm']:.3f} {verdict} "
                f"| {w['trace']}, {w['cost_model']}, {w['factor']:g}x"
            )
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    st = doc["settings"]
    out = [
        "# Our policies against vLLM's default scheduler\n",
        f"{st['requests']} requests per run, seed {st['seed']}, preemption `{st['preemption']}`, "
        f"engine limits: {st['engine_limits']}; wall time {st['wall_s']:.0f} s with "
        f"{st['jobs']} jobs. Workload: {st['workload']}. Saturation: {st['saturation']}. "
        f"SLO: {st['slo']}.\n",
        "## Mean / p99 end-to-end latency over vllm's, learned intervals\n",
        summary_table(doc, "learned"),
        "\n## The same, oracle intervals\n",
        summary_table(doc, "oracle"),
        "\n## Targets (learned intervals)\n",
        targets_table(doc["targets"]),
    ]
    for s in doc["setups"]:
        sat = s["saturation"]
        out += [
            f"\n## {s['trace']}, {s['cost_model']}\n",
            f"M = {s['kv_capacity_tokens']:,} tokens, at most {s['max_batch_size']} running "
            f"requests and {s['max_num_batched_tokens']} batched tokens per step; SLO TTFT <= "
            f"{s['slo']['ttft_s']:.3f} s, TPOT <= {s['slo']['tpot_s']:.3f} s. Learned intervals: "
            f"mean lo/hi {s['learned_mean_alpha']:.3f}, coverage {s['learned_coverage']:.3f}; "
            f"oracle `{s['oracle_intervals']}`. Saturation: rate scale "
            f"{sat['rate_scale']:.3g} of the trace's own {s['trace_own_rate_rps']:.2f} req/s = "
            f"{sat['rate_rps']:.2f} req/s ({len(sat['probes'])} probes, monotone: "
            f"{sat['monotone']}).\n",
            *detail_rows(s),
        ]
    return "\n".join(out) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """Mean (top) and p99 (bottom) ratio to vllm against load, one column per setup; learned
    intervals solid, oracle dashed, hsf black. Log scale where the ratios span over 3x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    setups = doc["setups"]
    policies = [p for p in doc["settings"]["policies"] if p != "vllm"]
    fig, axes = plt.subplots(2, len(setups), figsize=(4.2 * len(setups), 7), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^vDPX*"
    for col, s in enumerate(setups):
        x = [load["factor"] for load in s["loads"]]
        for row, key in enumerate(("mean_vs_vllm", "p99_vs_vllm")):
            ax = axes[row][col]
            values = [1.0]
            for i, p in enumerate(policies):
                color = "black" if p in CLAIRVOYANT else colors[i % len(colors)]
                for world, style in (("learned", "-"), ("oracle", "--")):
                    if world == "oracle" and p in CLAIRVOYANT:
                        continue
                    y = [load[world][p][key] for load in s["loads"]]
                    values += y
                    label = p if world == "learned" else None
                    ax.plot(x, y, style, color=color, marker=markers[i % 8], ms=4, label=label)
            ax.axhline(1.0, color="grey", lw=0.8)
            if key == "mean_vs_vllm":
                ax.axhline(TARGET_MEAN, color="grey", lw=0.8, ls=":")
            if max(values) / min(values) > 3:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("load / saturation load")
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(f"{s['trace']}, {s['cost_model']}", fontsize=9)
        axes[0][col].set_ylabel("mean e2e / vllm" if col == 0 else "")
        axes[1][col].set_ylabel("p99 e2e / vllm" if col == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(
        "ratio to vllm in the same run: learned intervals solid, oracle (same mean lo/hi) "
        "dashed, hsf (true lengths) black; dotted line: the 0.70 mean target",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
