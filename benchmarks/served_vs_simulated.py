"""Served vs simulated: one trace through `kvsched bench` + `kvsched serve --engine sim` and
through `kvsched simulate`, per policy (issue 4, Benchmarks; target: within 10%).

The bench sends max_tokens = the trace's output length with ignore_eos, so the gateway's
interval is exact ([o, o]) and `simulate --intervals exact` sees the same lengths; its synthetic
prompts are one sim-tokenizer token per word, so prompt lengths match too. The server runs
`--speedup S`, so the bench's arrival gaps are divided by rate_scale * S and served wall times
x S are compared with simulated times.

    python benchmarks/served_vs_simulated.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _serve_harness import ROOT, running_server
from numpy.typing import NDArray

from simulator.cost_model import load_cost_model
from simulator.experiment import ArrivalControl, build_workload
from simulator.run import simulate
from simulator.traces import load_trace

TRACE = ROOT / "data/traces/azure_conv_2023.csv"
KVSCHED = [sys.executable, "-m", "service.cli"]
FloatArray = NDArray[np.float64]


def served(policy: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Run the bench against a fresh server; per-request TTFT/E2E scaled to model time."""
    flags = ["--engine", "sim", "--speedup", str(args.speedup), "--policy", policy]
    flags += ["--predictor", "none", "--cost-model", args.cost_model]
    flags += ["--kv-tokens", str(args.kv_tokens), "--max-batch-size", str(args.max_batch_size)]
    out = tmp / f"bench_{policy}.json"
    with running_server(flags) as server:
        command = [*KVSCHED, "bench", "--url", server.url, "--trace", str(args.trace)]
        command += ["--limit", str(args.limit), "--rate-scale", str(args.rate_scale * args.speedup)]
        command += ["--json", str(out), "--no-progress"]
        subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    doc = json.loads(out.read_text())
    s = args.speedup
    return {
        "ttft_s": np.asarray(doc["ttfts"]) * s,
        "e2e_s": np.asarray(doc["e2els"]) * s,
        "output_tokens": np.asarray(doc["output_lens"]),
        "failed": int(doc["failed"]),
        "errors": [e for e in doc["errors"] if e][:3],
        "duration_s": float(doc["duration"]) * s,
        "evictions": _counter(metrics, "kvsched:num_preemptions_total"),
    }


def _counter(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name)
    )


def simulated_cli(policies: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`kvsched simulate` on the same trace/policies/cost model: its summary per policy."""
    out = tmp / "simulate.json"
    command = [*KVSCHED, "simulate", "--trace", str(args.trace), "--limit", str(args.limit)]
    command += ["--rate-scale", str(args.rate_scale), "--policies", ",".join(policies)]
    command += ["--intervals", "exact", "--cost-model", args.cost_model]
    command += ["--kv-tokens", str(args.kv_tokens), "--max-batch-size", str(args.max_batch_size)]
    command += ["--json", str(out), "--no-progress"]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results: dict[str, Any] = json.loads(out.read_text())["results"]
    return results


def simulated_requests(policy: str, args: argparse.Namespace) -> dict[str, FloatArray]:
    """The same run through the simulator's API, for per-request times."""
    cost_model = load_cost_model(args.cost_model, kv_tokens=args.kv_tokens)
    workload = build_workload(
        load_trace(args.trace), "exact", seed=0,
        arrivals=ArrivalControl(args.rate_scale, None, False, args.limit),
        kv_capacity_tokens=cost_model.kv_capacity_tokens,
    )  # fmt: skip
    log = simulate(workload, policy, cost_model, max_batch_size=args.max_batch_size).log
    return {
        "ttft_s": log.first_token_s - log.arrival_s,
        "e2e_s": log.completion_s - log.arrival_s,
        "output_tokens": log.output_tokens.astype(np.float64),
    }


def goodput(
    ttft_s: FloatArray, e2e_s: FloatArray, out: FloatArray, slo: tuple[float, float]
) -> float:
    """Fraction of requests with TTFT <= slo[0] and TPOT <= slo[1] (seconds, model time)."""
    tpot = np.where(out > 1, (e2e_s - ttft_s) / np.maximum(out - 1, 1), 0.0)
    return float(np.mean((ttft_s <= slo[0]) & (tpot <= slo[1])))


def compare(policy: str, srv: dict[str, Any], sim: dict[str, FloatArray],
            summary: dict[str, Any], slo: tuple[float, float]) -> dict[str, Any]:  # fmt: skip
    rows: dict[str, Any] = {}
    for key in ("ttft", "e2e"):
        a = srv[f"{key}_s"]
        rows[f"mean_{key}_s"] = (float(a.mean()), summary[f"mean_{key}_s"])
        rows[f"p99_{key}_s"] = (float(np.percentile(a, 99)), summary[f"p99_{key}_s"])
        rel = (a - sim[f"{key}_s"]) / np.maximum(sim[f"{key}_s"], 1e-9)
        rows[f"per_request_{key}_median_abs_rel_err"] = float(np.median(np.abs(rel)))
    rows["goodput_fraction"] = (
        goodput(srv["ttft_s"], srv["e2e_s"], srv["output_tokens"].astype(np.float64), slo),
        goodput(sim["ttft_s"], sim["e2e_s"], sim["output_tokens"], slo),
    )
    rows["evictions"] = (srv["evictions"], summary["evictions"])
    rows["makespan_s"] = (srv["duration_s"], summary["makespan_s"])
    rows["failed"] = srv["failed"]
    rows["errors"] = srv["errors"]
    return rows


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.limit} requests of {Path(args.trace).name}, rate-scale {args.rate_scale:g}, "
        f"{args.cost_model}, M = {args.kv_tokens} tokens, served with --speedup {args.speedup:g} "
        f"(served times x {args.speedup:g}); goodput: TTFT <= {args.slo_ttft_s:g} s and "
        f"TPOT <= {1e3 * args.slo_tpot_s:g} ms.",
        "",
        "| policy | metric | served | simulated | served / simulated - 1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    metrics = ("mean_ttft_s", "p99_ttft_s", "mean_e2e_s", "p99_e2e_s", "goodput_fraction",
               "evictions", "makespan_s")  # fmt: skip
    for policy, rows in results.items():
        for m in metrics:
            a, b = rows[m]
            err = f"{a / b - 1:+.1%}" if b else "n/a"
            lines.append(f"| {policy} | {m} | {a:.3f} | {b:.3f} | {err} |")
        for key in ("ttft", "e2e"):
            value = rows[f"per_request_{key}_median_abs_rel_err"]
            lines.append(f"| {policy} | per-request {key} median abs rel err | | | {value:.1%} |")
    return "\n".join(lines)


def plot(data: dict[str, tuple[dict[str, Any], dict[str, FloatArray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, key in zip(axes, ("ttft", "e2e"), strict=True):
        top = 0.0
        for policy, (srv, sim) in data.items():
            ax.plot(sim[f"{key}_s"], srv[f"{key}_s"], ".", ms=3, label=policy, alpha=0.6)
            top = max(top, float(np.nanmax(sim[f"{key}_s"])), float(np.nanmax(srv[f"{key}_s"])))
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="y = x")
        ax.set_xlabel(f"simulated {key.upper()} (s)")
        ax.set_ylabel(f"served {key.upper()} x speedup (s)")
        ax.legend(fontsize=8)
    fig.suptitle("per request: served (kvsched serve --engine sim) vs kvsched simulate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--cost-model", default="llama3-8b-h100")
    parser.add_argument("--kv-tokens", type=int, default=16492)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--policies", default="vllm,amin")
    parser.add_argument("--slo-ttft-s", type=float, default=1.0)
    parser.add_argument("--slo-tpot-s", type=float, default=0.010)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    policies = args.policies.split(",")
    slo = (args.slo_ttft_s, args.slo_tpot_s)
    results: dict[str, dict[str, Any]] = {}
    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        summaries = simulated_cli(policies, args, Path(tmp))
        for policy in policies:
            srv, sim = served(policy, args, Path(tmp)), simulated_requests(policy, args)
            results[policy] = compare(policy, srv, sim, summaries[policy], slo)
            data[policy] = (srv, sim)
            print(f"{policy}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    (args.out / "served_vs_simulated.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = table(results, args)
    (args.out / "served_vs_simulated.md").write_text(text + "\n")
    plot(data, args.out / "served_vs_simulated.png")
    print(text)


if __name__ == "__main__":
    main()
