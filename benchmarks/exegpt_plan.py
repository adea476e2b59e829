"""ExeGPT planner benchmark: RRA vs WAA on Azure code and conv, gain over static batching at four
latency targets next to continuous batching, and branch-and-bound vs exhaustive search cost.

Run: python benchmarks/exegpt_plan.py   (about a minute on 2 cores)
Writes docs/benchmarks/exegpt_plan.{json,md,png}. Cost model: the llama3-8b-h100 preset, 8
devices, 500 requests sampled per trace (seed 0). Targets follow the paper's latency bounds: the
bottom 10/30/70% of the static-batching latencies over its batch sizes, plus no bound (inf).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.cost_model import load_cost_model  # noqa: E402
from simulator.exegpt.baselines import (  # noqa: E402
    STATIC_BATCHES,
    _static_batch_s,
    batch_max_tokens,
    continuous_batching,
    static_batching,
)
from simulator.exegpt.config import (  # noqa: E402
    PRESET_WEIGHT_KV_TOKENS,
    ClusterSpec,
    SearchSpace,
    Workload,
)
from simulator.exegpt.search import Evaluator, SearchResult, branch_and_bound, exhaustive  # noqa: E402
from simulator.exegpt.timing import kv_capacity_tokens  # noqa: E402
from simulator.exegpt.xsim import length_stats  # noqa: E402
from simulator.traces import load_trace  # noqa: E402

OUT = Path("docs/benchmarks")
PRESET, NUM_GPUS, SAMPLES = "llama3-8b-h100", 8, 500


def _total(r: SearchResult) -> float:
    return 0.0 if r.prediction is None else r.replicas * r.prediction.throughput_rps


def targets(workload: Workload, cost: Any, cluster: ClusterSpec) -> list[float]:
    """Bottom 10/30/70% of static-batching latencies (TP 1, batch sizes that fit) plus inf."""
    prompt, room = workload.mean_prompt_tokens, kv_capacity_tokens(cost, cluster, 1)
    lats = []
    for b in STATIC_BATCHES:
        q99 = batch_max_tokens(workload.output_tokens, b)[1]
        if b * (prompt + q99) > room:
            break
        lats.append(_static_batch_s(cost, cluster, 1, b, prompt, q99))
    return [round(float(np.quantile(lats, q)), 2) for q in (0.1, 0.3, 0.7)] + [math.inf]


def cell(workload: Workload, cost: Any, cluster: ClusterSpec, target: float) -> dict[str, Any]:
    stats = length_stats(workload)
    row: dict[str, Any] = {"target_s": target}
    for name, policies in (("rra", ("rra",)), ("waa", ("waa",)), ("best", ("rra", "waa"))):
        space = SearchSpace(policies=policies)  # type: ignore[arg-type]
        r = branch_and_bound(Evaluator(stats, cost, cluster), space, target)
        row[name] = {
            "throughput_rps": _total(r),
            "label": r.config.label() if r.config else None,
            "replicas": r.replicas,
            "evaluated": r.evaluated,
            "grid_size": r.grid_size,
            "search_s": r.elapsed_s,
        }
    full = exhaustive(Evaluator(stats, cost, cluster), SearchSpace(), target)
    row["exhaustive"] = {
        "throughput_rps": _total(full),
        "evaluated": full.evaluated,
        "search_s": full.elapsed_s,
    }
    row["static"] = static_batching(workload, cost, cluster, target).to_dict()
    row["continuous"] = continuous_batching(workload, cost, cluster, target).to_dict()
    static = row["static"]["throughput_rps"]
    row["gain_over_static"] = row["best"]["throughput_rps"] / static if static else None
    return row


def main() -> None:
    cost = load_cost_model(PRESET)
    cluster = ClusterSpec(NUM_GPUS, weight_kv_tokens=PRESET_WEIGHT_KV_TOKENS[PRESET])
    results: dict[str, Any] = {"cost_model": PRESET, "num_gpus": NUM_GPUS, "samples": SAMPLES}
    for trace in ("code", "conv"):
        workload = Workload.from_trace(
            load_trace(f"data/traces/azure_{trace}_2023.csv"), SAMPLES, seed=0
        )
        rows = []
        for target in targets(workload, cost, cluster):
            rows.append(cell(workload, cost, cluster, target))
            r = rows[-1]
            print(
                f"{trace} target {target}: RRA {r['rra']['throughput_rps']:.1f} "
                f"WAA {r['waa']['throughput_rps']:.1f} static {r['static']['throughput_rps']:.1f}"
                f" continuous {r['continuous']['throughput_rps']:.1f} req/s",
                flush=True,
            )
        results[trace] = rows
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "exegpt_plan.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "exegpt_plan.md").write_text(table(results))
    plot(results, OUT / "exegpt_plan.png")
    print(table(results))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| trace | target s | RRA | WAA | winner | static | continuous | gain vs static "
        "| B&B evals / exhaustive | B&B s / exhaustive s |",
        "|" + " --- |" * 10,
    ]
    for trace in ("code", "conv"):
        for r in results[trace]:
            rra, waa = r["rra"]["throughput_rps"], r["waa"]["throughput_rps"]
            winner = "-" if not max(rra, waa) else ("RRA" if rra >= waa else "WAA")
            gain = "-" if r["gain_over_static"] is None else f"{r['gain_over_static']:.2f}x"
            lines.append(
                f"| {trace} | {r['target_s']} | {_fmt(rra)} | {_fmt(waa)} | {winner} | "
                f"{_fmt(r['static']['throughput_rps'])} | {_fmt(r['continuous']['throughput_rps'])}"
                f" | {gain} | {r['best']['evaluated']} / {r['exhaustive']['evaluated']} | "
                f"{r['best']['search_s']:.3f} / {r['exhaustive']['search_s']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = ("rra", "waa", "static", "continuous")
    for ax, trace in zip(axes, ("code", "conv"), strict=True):
        rows = results[trace]
        x = np.arange(len(rows))
        for i, name in enumerate(names):
            ax.bar(x + (i - 1.5) * 0.2, [r[name]["throughput_rps"] for r in rows], 0.2, label=name)
        ax.set_xticks(x, [str(r["target_s"]) for r in rows])
        ax.set_xlabel("latency target of the S99 output (s)")
        ax.set_ylabel("throughput (req/s, 8 devices)")
        ax.set_title(f"Azure {trace} 2023, {results['cost_model']}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
