"""Serving a plan end to end (issue 6): `kvsched plan` -> `kvsched serve --plan` (sim engine) ->
the `kvsched bench` client replaying a slice of the Azure code trace, for a WAA and an RRA plan,
against the planner's prediction and simulator/cluster.py run on the same slice.

Run: python benchmarks/served_plan.py   (about a minute on 2 cores)
Writes docs/benchmarks/served_plan.{json,md,png}. The slice is sent as a closed loop of
B_D x replicas requests in flight (the most a plan ever holds), all waiting from t=0 as in the
planner's saturated-backlog model; served wall times x --speedup are model seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _serve_harness import ROOT, running_server  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from tqdm import tqdm  # noqa: E402

from service.commands.loadgen import build_requests, first_model, replay  # noqa: E402
from simulator.arrivals import with_arrivals  # noqa: E402
from simulator.cluster import (  # noqa: E402
    NEAREST_FRACTION,
    NEAREST_MIN,
    simulate_cluster,
    steady_throughput,
)
from simulator.cost_model import load_cost_model  # noqa: E402
from simulator.exegpt.config import ClusterSpec, Config, Workload  # noqa: E402
from simulator.traces import load_trace  # noqa: E402

TRACE = ROOT / "data/traces/azure_code_2023.csv"
KVSCHED = [sys.executable, "-m", "service.cli"]
CASES = (("waa", 3.0), ("rra", 10.0))  # policy the planner picks at this target on 4 devices
FloatArray = NDArray[np.float64]


def make_plan(target_s: float, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    command = [*KVSCHED, "plan", "--trace", str(args.trace), "--profile", args.profile]
    command += ["--gpus", str(args.gpus), "--latency-target-s", str(target_s)]
    command += ["--samples", "500", "--no-baselines", "--no-progress", "--json", str(path)]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    plan: dict[str, Any] = json.loads(path.read_text())
    return plan


def latency_summary(latency_s: FloatArray, output_tokens: NDArray[np.int64]) -> dict[str, float]:
    """Mean latency and the planner's metric: the latency of a p99-length output (mean over the
    requests nearest S99, as simulator.cluster.ClusterResult.p99_length_latency_s)."""
    s99 = float(np.ceil(np.quantile(output_tokens, 0.99)))
    count = max(NEAREST_MIN, int(NEAREST_FRACTION * len(output_tokens)))
    nearest = np.argsort(np.abs(output_tokens - s99), kind="stable")[:count]
    return {
        "p99_length_latency_s": float(latency_s[nearest].mean()),
        "mean_latency_s": float(latency_s.mean()),
    }


def concurrency(plan: dict[str, Any]) -> int:
    config = plan["config"]
    return int(config["decode_batch"]) * int(config["replicas"])


async def _replay(url: str, trace: Any, max_concurrency: int) -> tuple[list[Any], list[float]]:
    requests = build_requests(trace, seed=0)
    finished: list[float] = []
    with tqdm(total=len(requests), unit="req", file=sys.stderr, leave=False) as bar:

        def done(result: Any) -> None:
            finished.append(time.perf_counter())
            bar.update()

        model = await first_model(url)
        results, _ = await replay(
            url, requests, endpoint="completions", model=model,
            max_concurrency=max_concurrency, on_done=done,
        )  # fmt: skip
    return results, finished


def served(plan_path: Path, plan: dict[str, Any], trace: Any, speedup: float) -> dict[str, Any]:
    """Serve the plan, replay the slice, and measure in model seconds."""
    flags = ["--plan", str(plan_path), "--speedup", str(speedup), "--policy", "vllm"]
    flags += ["--predictor", "none", "--max-model-len", "16384"]
    with running_server(flags) as server:
        started = time.perf_counter()
        results, finished = asyncio.run(_replay(server.url, trace, concurrency(plan)))
        wall_s = time.perf_counter() - started
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        view = httpx.get(f"{server.url}/v1/scheduler", timeout=10).json()
    ok = [r for r in results if r.ok]
    e2e = np.array([r.e2e_s for r in ok]) * speedup
    outputs = np.array([r.output_tokens for r in ok], dtype=np.int64)
    queue_s = _mean(metrics, "kvsched:request_queue_time_seconds") * speedup
    client = latency_summary(e2e, outputs)
    return {
        "roles": [w["role"] for w in view["workers"]],
        "max_concurrency": concurrency(plan),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "throughput_rps": steady_throughput(np.array(finished)) / speedup,
        "overall_throughput_rps": len(ok) / (wall_s * speedup),
        # from first scheduled (the cluster simulation's start): client e2e - mean queue time
        **{key: value - queue_s for key, value in client.items()},
        "client_p99_length_latency_s": client["p99_length_latency_s"],
        "mean_queue_s": queue_s,
        "mean_ttft_s": float(np.mean([r.ttft_s for r in ok])) * speedup,
        "prompt_tokens": _counter(metrics, "kvsched:prompt_tokens_total"),
        "kv_handover_tokens": _counter(metrics, "kvsched:kv_handover_tokens_total"),
        "wall_s": wall_s,
    }


def _mean(metrics: str, histogram: str) -> float:
    count = _counter(metrics, histogram + "_count")
    return _counter(metrics, histogram + "_sum") / count if count else float("nan")


def _counter(metrics: str, name: str) -> float:
    lines = metrics.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def simulated(plan: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """simulator/cluster.py on the same slice: request i on replica i mod R, every replica
    saturated from t=0 (the planner's model); throughput over the union of completions."""
    fields = dict(plan["config"])
    replicas = int(fields.pop("replicas"))
    config, cluster = Config(**fields), ClusterSpec(**plan["cluster"])
    cost = load_cost_model(plan["cost_model"])
    finish, latency = [], []
    for replica in range(replicas):
        ids = np.arange(replica, len(workload), replicas)
        part = Workload(workload.prompt_tokens[ids], workload.output_tokens[ids])
        result = simulate_cluster(config, part, cost, cluster)
        finish.append(result.finish_s)
        latency.append((ids, result.latency_s))
    order = np.concatenate([ids for ids, _ in latency])
    latency_s = np.empty(len(workload))
    latency_s[order] = np.concatenate([lat for _, lat in latency])
    finish_s = np.concatenate(finish)
    return {
        "throughput_rps": steady_throughput(finish_s),
        "overall_throughput_rps": len(workload) / float(finish_s.max()),
        **latency_summary(latency_s, workload.output_tokens),
    }


def run_case(policy: str, target_s: float, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    plan_path = tmp / f"{policy}.json"
    plan = make_plan(target_s, args, plan_path)
    trace = with_arrivals(load_trace(args.trace), backlog=True, limit=args.limit)
    workload = Workload(
        np.asarray(trace.prompt_tokens, dtype=np.int64),
        np.asarray(trace.output_tokens, dtype=np.int64),
    )
    print(f"{policy}: {plan['label']} x{plan['config']['replicas']}", file=sys.stderr)
    handed = workload.output_tokens > 1  # WAA: these reach a decode worker with prompt + 1
    handover = int((workload.prompt_tokens[handed] + 1).sum()) if plan["policy"] == "waa" else 0
    return {
        "expected_kv_handover_tokens": handover,
        "asked_policy": policy,
        "latency_target_s": target_s,
        "plan": {key: plan[key] for key in ("policy", "label", "config", "serve")},
        "predicted": {"throughput_rps": plan["throughput_rps"], "latency_s": plan["latency_s"]},
        "simulated": simulated(plan, workload),
        "served": served(plan_path, plan, trace, args.speedup),
    }


def _err(a: float, b: float) -> str:
    return f"{a / b - 1:+.0%}" if b else "n/a"


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['limit']} requests (the first of {Path(doc['trace']).name}), {doc['profile']}, "
        f"{doc['gpus']} devices, served with --speedup {doc['speedup']:g} (times in model "
        "seconds). Throughput: steady state (10-90% of completions), req/s. Latency: of a "
        "p99-length output from its first scheduling (served: client end-to-end minus the mean "
        "queue time; client end-to-end in brackets), s.",
        "",
        "| plan | roles served | throughput: planner / cluster sim / served | served vs sim "
        "| p99-length latency: planner / cluster sim / served | served vs sim | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in doc["cases"]:
        p, c, s = case["predicted"], case["simulated"], case["served"]
        roles = ", ".join(f"{s['roles'].count(r)} {r}" for r in dict.fromkeys(s["roles"]))
        lines.append(
            f"| {case['plan']['label']} x{case['plan']['config']['replicas']} | {roles} | "
            f"{p['throughput_rps']:.2f} / {c['throughput_rps']:.2f} / {s['throughput_rps']:.2f} "
            f"| {_err(s['throughput_rps'], c['throughput_rps'])} | {p['latency_s']:.2f} / "
            f"{c['p99_length_latency_s']:.2f} / {s['p99_length_latency_s']:.2f} "
            f"({s['client_p99_length_latency_s']:.2f}) | "
            f"{_err(s['p99_length_latency_s'], c['p99_length_latency_s'])} | {s['failed']} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [case["plan"]["policy"].upper() for case in doc["cases"]]
    x, width = np.arange(len(labels)), 0.25
    sources = (("planner", "predicted"), ("cluster sim", "simulated"), ("served", "served"))
    for ax, metric, title in (
        (axes[0], "throughput_rps", "throughput (req/s, model time)"),
        (axes[1], "p99_length_latency_s", "latency of a p99-length output (s)"),
    ):
        for k, (name, key) in enumerate(sources):
            alias = "latency_s" if key == "predicted" and metric != "throughput_rps" else metric
            values = [case[key][alias] for case in doc["cases"]]
            ax.bar(x + (k - 1) * width, values, width, label=name)
        ax.set_xticks(x, labels)
        ax.set_title(title)
    axes[0].legend(loc="lower right", framealpha=0.9)
    fig.suptitle(f"Serving a plan: {doc['limit']} requests of {Path(doc['trace']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--profile", default="llama3-8b-h100")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--limit", type=int, default=1000, help="requests of the trace replayed")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    args = parser.parse_args()
    doc: dict[str, Any] = {
        "trace": str(args.trace.relative_to(ROOT) if args.trace.is_absolute() else args.trace),
        **{key: getattr(args, key) for key in ("profile", "gpus", "limit", "speedup")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        doc["cases"] = [run_case(p, t, args, Path(tmp)) for p, t in CASES]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "served_plan.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "served_plan.md").write_text(table(doc))
    plot(doc, args.out / "served_plan.png")
    print(table(doc))


if __name__ == "__main__":
    main()
