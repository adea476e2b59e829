"""End to end: schedulers with learned intervals vs oracle intervals of the same mean alpha.

Arrivals are the Azure conv trace's (scaled); each request takes a prompt, its target model and
its true output length from the held-out 20% of the shipped corpus (the prompts the default
model never saw). Policies `amin`, `amax`, `mcsf`, `vllm` run with (a) the default model's
calibrated intervals, refined while requests run, and (b) oracle `alpha=X` intervals with X the
learned intervals' mean lo/hi; `hsf` knows the true lengths. Writes a canonical JSONL trace
with prompts, so `kvsched simulate --intervals model=default` replays the same workload.

    python benchmarks/learned_intervals.py --rate-scale 0.5 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from predictors.datasets import load_samples
from predictors.default import load_predictor, split_train_test
from simulator.cost_model import load_cost_model
from simulator.experiment import Experiment, build_workload
from simulator.traces import load_trace

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("vllm", "mcsf", "amax", "amin", "hsf")


def write_workload_trace(path: Path, limit: int, rate_scale: float, seed: int) -> None:
    """Azure conv arrival times + held-out (prompt, model, length) rows drawn with a seed."""
    arrivals = load_trace(ROOT / "data/traces/azure_conv_2023.csv").arrival_s[:limit]
    samples = load_samples(ROOT / "data/text/lengths.jsonl.gz")
    test = split_train_test(samples)[1]
    pick = np.random.default_rng(seed).integers(0, len(test), size=len(arrivals))
    with path.open("w") as f:
        for arrival, row in zip(arrivals / rate_scale, pick, strict=True):
            record = {
                "arrival_s": float(arrival),
                "prompt": test.prompts[row],
                "model": test.models[row],
                "prompt_tokens": int(test.prompt_tokens[row]),
                "output_tokens": int(test.output_tokens[row]),
            }
            f.write(json.dumps(record) + "\n")


def run(trace_path: Path, cost_name: str, seed: int) -> dict[str, Any]:
    cost = load_cost_model(cost_name)
    trace = load_trace(trace_path)
    predictor = load_predictor("default")
    learned = build_workload(
        trace,
        "model=default",
        seed=seed,
        predictor=predictor,
        kv_capacity_tokens=cost.kv_capacity_tokens,
    )
    alpha = float(np.mean(learned.lo / learned.hi))
    covered = float(
        np.mean((learned.lo <= learned.output_tokens) & (learned.output_tokens <= learned.hi))
    )
    oracle = build_workload(
        trace, f"alpha={alpha:.4f}", seed=seed, kv_capacity_tokens=cost.kv_capacity_tokens
    )
    out: dict[str, Any] = {"mean_alpha": alpha, "coverage": covered, "requests": len(trace)}
    for name, workload, refiner in (("learned", learned, predictor), ("oracle", oracle, None)):
        experiment = Experiment(workload, cost, str(trace_path), name, seed, refiner=refiner)
        results = experiment.run(POLICIES, show_progress=True)
        out[name] = {p: r.summary for p, r in results.items()}
    return out


def table(result: dict[str, Any]) -> str:
    base = result["learned"]["hsf"]["mean_e2e_s"]
    lines = [
        f"mean alpha of the learned intervals {result['mean_alpha']:.3f}, "
        f"coverage {result['coverage']:.3f}, {result['requests']} requests\n",
        "| policy | intervals | mean e2e s | p99 e2e s | mean / H-SF | evictions |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("learned", "oracle"):
        for policy in POLICIES:
            if policy == "hsf" and kind == "oracle":
                continue
            s = result[kind][policy]
            lines.append(
                f"| {policy} | {kind if policy != 'hsf' else 'true lengths'} "
                f"| {s['mean_e2e_s']:.2f} | {s['p99_e2e_s']:.2f} "
                f"| {s['mean_e2e_s'] / base:.3f} | {s['evictions']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-model", default="llama2-70b-a100x2")
    parser.add_argument("--rate-scale", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"x{args.rate_scale:g}"
    trace_path = args.out / f"learned_workload_{tag}.jsonl"
    write_workload_trace(trace_path, args.limit, args.rate_scale, args.seed)
    result = run(trace_path, args.cost_model, args.seed)
    result["setup"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / f"learned_intervals_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"learned_intervals_{tag}.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
