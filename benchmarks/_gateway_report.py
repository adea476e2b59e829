"""Markdown tables and the overload PNG for benchmarks/gateway_overhead.py.

Reads the JSON document that script builds (see its docstring); writes nothing itself except
the PNG in `plot_overload`. Latencies are in milliseconds, memory in MiB.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _cpu(res: dict[str, Any]) -> str:
    cpu = res["cpu_ms_per_request"]
    return f"{cpu['gateway']:.2f} / {cpu['workers']:.2f} / {cpu['client']:.2f}"


def format_tables(document: dict[str, Any], args: argparse.Namespace) -> str:
    rate = f"rate{args.rate:g}"
    lines = [
        f"Closed loop, {args.concurrency} connections, max_tokens=1 (zero-cost model):",
        "",
        "| predictor | mode | req/s | p50 ms | p99 ms | CPU ms/req gateway / workers / client |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    predictors = [k.removeprefix("predictor_") for k in document if k.startswith("predictor_")]
    for name in predictors:
        suite = document[f"predictor_{name}"]
        for mode in ("json", "stream"):
            res = suite[f"throughput_{mode}"]
            lat = res["latency"]
            lines.append(
                f"| {name} | {mode} | {res['requests_per_s']:.0f} | {lat['p50_ms']:.1f} "
                f"| {lat['p99_ms']:.1f} | {_cpu(res)} |"
            )
    lines += [
        "",
        f"Open loop at {args.rate:g} req/s for {args.duration_s:g} s, max_tokens=1 (latency from "
        "the scheduled send time):",
        "",
        "| predictor | request | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | non-200 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in predictors:
        suite = document[f"predictor_{name}"]
        for mode in ("json", "stream", "health"):
            res = suite[f"{rate}_{mode}"]
            lat = res["latency"]
            bad = sum(v for k, v in res["statuses"].items() if k != "200")
            label = {"json": "completion", "stream": "completion SSE", "health": "GET /health"}
            lines.append(
                f"| {name} | {label[mode]} | {res['requests_per_s']:.0f} | {lat['p50_ms']:.2f} "
                f"| {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['max_ms']:.1f} | {bad} |"
            )
    return "\n".join(lines + ["", *overload_table(document["overload"], args)])


def overload_table(over: dict[str, Any], args: argparse.Namespace) -> list[str]:
    res = over["overload"]
    total = res["requests"]
    n429 = res["statuses"].get("429", 0)
    rss = _rss_series(over)
    mib = [sum(r.values()) / 1024 for r in rss[1]]
    after = sum(over["rss_after_2s_kib"].values()) / 1024
    lat200 = res.get("latency_200", {"p50_ms": float("nan"), "p99_ms": float("nan")})
    lat429 = res.get("latency_429", {"p50_ms": float("nan"), "p99_ms": float("nan")})
    return [
        f"Overload: llama3-8b-h100 cost model, --max-batch-size 4, --max-queue "
        f"{args.overload_queue}, max_tokens={args.overload_tokens}; capacity (closed loop, "
        f"{args.overload_queue} connections) {over['capacity']['requests_per_s']:.1f} req/s; "
        f"offered {over['offered_rate']:.0f} req/s open loop for {args.overload_duration_s:g} s:",
        "",
        "| requests | 200 | 429 | 429 share | 200 p50 / p99 ms | 429 p50 / p99 ms "
        "| RSS MiB start / max / end / +2 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {total} | {res['statuses'].get('200', 0)} | {n429} | {n429 / max(total, 1):.1%} "
        f"| {lat200['p50_ms']:.0f} / {lat200['p99_ms']:.0f} "
        f"| {lat429['p50_ms']:.1f} / {lat429['p99_ms']:.1f} "
        f"| {mib[0]:.0f} / {max(mib):.0f} / {mib[-1]:.0f} / {after:.0f} |",
    ]


def _rss_series(over: dict[str, Any]) -> tuple[list[float], list[dict[str, int]]]:
    samples = over["rss"]
    return [s["t_s"] for s in samples], [s["rss_kib"] for s in samples]


def plot_overload(over: dict[str, Any], path: Path) -> None:
    """RSS per process over time, and per-second 200/429 counts with 429 latency."""
    times, rss = _rss_series(over)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    pids = sorted({p for r in rss for p in r}, key=int)
    gateway = pids[0]
    for pid in pids:
        values = [r.get(pid, 0) / 1024 for r in rss]
        top.plot(times, values, label="gateway" if pid == gateway else f"child {pid}")
    top.plot(times, [sum(r.values()) / 1024 for r in rss], "k--", label="total")
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    top.set_title(f"10x overload: offered {over['offered_rate']:.0f} req/s, bounded queue")
    records = np.asarray(over["overload"]["records"], dtype=np.float64)
    seconds = np.floor(records[:, 0]).astype(int)
    bins = np.arange(seconds.max() + 2)
    for status, color in ((200, "tab:green"), (429, "tab:red")):
        mask = records[:, 1] == status
        counts, _ = np.histogram(seconds[mask], bins=bins)
        bottom.step(bins[:-1], counts, where="post", color=color, label=f"HTTP {status} / s")
    bottom.set_ylabel("responses per second")
    bottom.set_xlabel("seconds since the overload started")
    twin = bottom.twinx()
    mask = records[:, 1] == 429
    twin.plot(records[mask, 0], records[mask, 2] * 1e3, ".", ms=1, color="tab:orange", alpha=0.3)
    twin.set_ylabel("429 latency (ms)", color="tab:orange")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
