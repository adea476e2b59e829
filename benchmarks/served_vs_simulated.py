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
import dataclasses
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
        # the gateway's own view (its arrival = the request parsed): where TTFT goes
        "gateway_ttft_s": _mean(metrics, "kvsched:time_to_first_token_seconds") * s,
        "gateway_queue_s": _mean(metrics, "kvsched:request_queue_time_seconds") * s,
        # the device waiting on the host between back-to-back iterations (worker's own count)
        "host_overhead_s": _counter(metrics, "kvsched:host_overhead_seconds_total") * s,
        "iterations": _counter(metrics, "kvsched:batch_formation_seconds_count"),
    }


def _mean(metrics: str, histogram: str) -> float:
    """Mean of a Prometheus histogram in the exposition text: _sum / _count."""
    total = _counter(metrics, histogram + "_sum")
    count = _counter(metrics, histogram + "_count")
    return total / count if count else float("nan")


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


def simulated_requests(
    policy: str, args: argparse.Namespace, extra_base_ms: float = 0.0
) -> dict[str, FloatArray]:
    """The same run through the simulator's API, for per-request times; `extra_base_ms` adds
    a host overhead to every iteration (the served run's measured mean, in model time)."""
    cost_model = load_cost_model(args.cost_model, kv_tokens=args.kv_tokens)
    cost_model = dataclasses.replace(cost_model, base_ms=cost_model.base_ms + extra_base_ms)
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
        "queue_s": log.first_start_s - log.arrival_s,
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
    rows["ttft_breakdown_s"] = ttft_breakdown(srv, sim)
    rows["makespan_s"] = (srv["duration_s"], summary["makespan_s"])
    rows["failed"] = srv["failed"]
    rows["errors"] = srv["errors"]
    return rows


def with_host_overhead(
    policy: str, srv: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    """Simulate again with the served run's mean host overhead per iteration added to base_ms:
    does the measured overhead account for the served/simulated gap?"""
    extra_ms = 1e3 * srv["host_overhead_s"] / max(srv["iterations"], 1.0)
    sim = simulated_requests(policy, args, extra_ms)
    row = {"extra_base_ms": extra_ms}
    for key in ("ttft", "e2e"):
        a, b = srv[f"{key}_s"], sim[f"{key}_s"]
        row[f"mean_{key}_s_served"], row[f"mean_{key}_s_simulated"] = (
            float(a.mean()),
            float(b.mean()),
        )
        rel = (a - b) / np.maximum(b, 1e-9)
        row[f"per_request_{key}_median_abs_rel_err"] = float(np.median(np.abs(rel)))
    return row


def ttft_breakdown(srv: dict[str, Any], sim: dict[str, FloatArray]) -> dict[str, float]:
    """Mean TTFT split into queueing (arrival -> first admission), admission -> first token at
    the gateway, and the HTTP/SSE leg (client TTFT - gateway TTFT); model seconds."""
    sim_queue, sim_ttft = float(np.mean(sim["queue_s"])), float(np.mean(sim["ttft_s"]))
    return {
        "served_client_ttft": float(np.mean(srv["ttft_s"])),
        "served_http_leg": float(np.mean(srv["ttft_s"])) - srv["gateway_ttft_s"],
        "served_queue": srv["gateway_queue_s"],
        "served_admission_to_first_token": srv["gateway_ttft_s"] - srv["gateway_queue_s"],
        "simulated_ttft": sim_ttft,
        "simulated_queue": sim_queue,
        "simulated_admission_to_first_token": sim_ttft - sim_queue,
    }


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
    lines += ["", "Mean TTFT, broken down (model seconds):", ""]
    lines += ["| policy | part | served | simulated |", "| --- | --- | --- | --- |"]
    for policy, rows in results.items():
        b = rows["ttft_breakdown_s"]
        parts = (("queue (arrival -> first admission)", "queue"),
                 ("admission -> first token", "admission_to_first_token"))  # fmt: skip
        for label, key in parts:
            lines.append(
                f"| {policy} | {label} | {b['served_' + key]:.3f} | {b['simulated_' + key]:.3f} |"
            )
        http_leg = b["served_http_leg"]
        lines.append(f"| {policy} | HTTP/SSE leg (client - gateway) | {http_leg:.3f} | |")
    lines += ["", "Simulated again with the served run's measured host overhead per iteration "
              "added to base_ms:", "",
              "| policy | + base_ms | mean TTFT served / simulated | mean E2E served / simulated "
              "| per-request E2E median error |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for policy, rows in results.items():
        w = rows["with_host_overhead"]
        ttft = w["mean_ttft_s_served"] / w["mean_ttft_s_simulated"] - 1
        e2e = w["mean_e2e_s_served"] / w["mean_e2e_s_simulated"] - 1
        lines.append(
            f"| {policy} | {w['extra_base_ms']:.2f} ms | {ttft:+.1%} | {e2e:+.1%} "
            f"| {w['per_request_e2e_median_abs_rel_err']:.1%} |"
        )
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
            results[policy]["with_host_overhead"] = with_host_overhead(policy, srv, args)
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
