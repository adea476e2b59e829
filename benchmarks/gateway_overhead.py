"""Gateway overhead of `kvsched serve --engine sim` at zero model time (issue 4, Benchmarks).

(a) closed-loop requests/s at 64 connections, max_tokens=1, JSON and SSE; (b) p50/p99 latency
of max_tokens=1 requests at a fixed open-loop 200 req/s (all of it gateway + IPC + client, since
the cost model is all zeros), with GET /health as the bare-HTTP reference; (c) 10x overload with
a small --max-queue on a real cost model: 429 fraction and latency, server RSS over time.

    python benchmarks/gateway_overhead.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _gateway_report import format_tables, plot_overload
from _serve_harness import (
    RawClient,
    Server,
    cpu_s,
    process_tree,
    rss_kib,
    running_server,
)

ZERO_PROFILE = (
    'name = "zero"\nkv_capacity_tokens = 1000000\nbase_ms = 0.0\nprefill_ms_per_token = 0.0\n'
    "decode_ms_per_request = 0.0\nkv_ms_per_token = 0.0\n"
)
PROMPT = "the quick brown fox jumps over the lazy dog"


def body(stream: bool, max_tokens: int = 1) -> bytes:
    doc = {"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    return json.dumps(doc).encode()


def tree_cpu_s(pid: int) -> dict[int, float]:
    return {p: cpu_s(p) for p in process_tree(pid)}


def latency_stats(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    if not len(ms):
        return {"n": 0}
    pct = {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}
    return {"n": len(ms), "mean_ms": float(ms.mean()), **pct, "max_ms": float(ms.max())}


async def closed_loop(
    server: Server, payload: bytes, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """`concurrency` connections each sending back-to-back; requests/s over `duration_s`."""
    client = RawClient(server.port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    before, cpu0 = tree_cpu_s(server.pid), time.process_time()
    start = time.perf_counter()
    stop = start + duration_s

    async def one_connection() -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            status, _ = await client.send("POST", "/v1/completions", payload)
            latencies.append(time.perf_counter() - sent)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    wall_s = time.perf_counter() - start
    client.close()
    return _summary(server, statuses, latencies, wall_s, before, time.process_time() - cpu0)


def _summary(
    server: Server, statuses: dict[int, int], latencies: list[float], wall_s: float,
    before: dict[int, float], client_cpu_s: float,
) -> dict[str, Any]:  # fmt: skip
    after = tree_cpu_s(server.pid)
    gateway_cpu = after.get(server.pid, 0.0) - before.get(server.pid, 0.0)
    others_cpu = sum(v - before.get(p, 0.0) for p, v in after.items() if p != server.pid)
    num = sum(statuses.values())
    return {
        "requests": num,
        "statuses": {str(k): v for k, v in statuses.items()},
        "wall_s": wall_s,
        "requests_per_s": num / wall_s,
        "latency": latency_stats(latencies),
        "cpu_s": {"gateway": gateway_cpu, "workers": others_cpu, "client": client_cpu_s},
        "cpu_ms_per_request": {
            "gateway": 1e3 * gateway_cpu / max(num, 1),
            "workers": 1e3 * others_cpu / max(num, 1),
            "client": 1e3 * client_cpu_s / max(num, 1),
        },
    }


async def open_loop(
    server: Server, method: str, path: str, payload: bytes, rate: float, duration_s: float,
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Requests at a fixed rate (latency from the scheduled send time), per-request records."""
    client = RawClient(server.port)
    records: list[tuple[float, int, float]] = []  # (scheduled offset, status, latency)
    before, cpu0 = tree_cpu_s(server.pid), time.process_time()
    start = time.perf_counter()

    async def one(offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        status, _ = await client.send(method, path, payload)
        records.append((offset, status, time.perf_counter() - (start + offset)))

    sampler = asyncio.create_task(sample_rss(server.pid, start, samples)) if samples else None
    offsets = np.arange(int(rate * duration_s)) / rate
    await asyncio.gather(*(one(float(t)) for t in offsets))
    if sampler is not None:
        sampler.cancel()
    wall_s = time.perf_counter() - start
    client.close()
    statuses: dict[int, int] = {}
    for _, status, _ in records:
        statuses[status] = statuses.get(status, 0) + 1
    result = _summary(server, statuses, [r[2] for r in records], wall_s, before,
                      time.process_time() - cpu0)  # fmt: skip
    for status in statuses:
        result[f"latency_{status}"] = latency_stats([r[2] for r in records if r[1] == status])
    result["records"] = [[round(t, 4), s, round(lat, 6)] for t, s, lat in sorted(records)]
    return result


async def sample_rss(pid: int, start: float, samples: list[dict[str, Any]] | None) -> None:
    """Append {t_s, rss_kib per pid} every 0.25 s (the first element is the pre-load sample)."""
    assert samples is not None
    while True:
        rss = {str(p): rss_kib(p) for p in process_tree(pid)}
        samples.append({"t_s": time.perf_counter() - start, "rss_kib": rss})
        await asyncio.sleep(0.25)


async def zero_cost_suite(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stream in (False, True):  # warm-up, then measure
        await closed_loop(server, body(stream), args.concurrency, 1.0)
        key = "stream" if stream else "json"
        out[f"throughput_{key}"] = await closed_loop(
            server, body(stream), args.concurrency, args.duration_s
        )
    for stream in (False, True):
        key = "stream" if stream else "json"
        res = await open_loop(server, "POST", "/v1/completions", body(stream), args.rate,
                              args.duration_s)  # fmt: skip
        res.pop("records")
        out[f"rate{args.rate:g}_{key}"] = res
    res = await open_loop(server, "GET", "/health", b"", args.rate, args.duration_s)
    res.pop("records")
    out[f"rate{args.rate:g}_health"] = res
    return out


async def overload_suite(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Capacity with max-queue connections, then 10x that rate open-loop; RSS sampled."""
    payload = body(False, args.overload_tokens)
    capacity = await closed_loop(server, payload, args.overload_queue, args.duration_s)
    rate = args.overload_factor * capacity["requests_per_s"]
    samples: list[dict[str, Any]] = [
        {"t_s": 0.0, "rss_kib": {str(p): rss_kib(p) for p in process_tree(server.pid)}}
    ]
    result = await open_loop(server, "POST", "/v1/completions", payload, rate,
                             args.overload_duration_s, samples)  # fmt: skip
    await asyncio.sleep(2.0)
    after = {str(p): rss_kib(p) for p in process_tree(server.pid)}
    return {
        "capacity": capacity, "offered_rate": rate, "overload": result, "rss": samples,
        "rss_after_2s_kib": after,
    }  # fmt: skip


def server_flags(predictor: str, profile: Path) -> list[str]:
    return ["--engine", "sim", "--cost-model", str(profile), "--predictor", predictor]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--predictors", default="none,default")
    parser.add_argument("--overload-queue", type=int, default=16, help="--max-queue")
    parser.add_argument("--overload-tokens", type=int, default=64, help="max_tokens")
    parser.add_argument("--overload-factor", type=float, default=10.0)
    parser.add_argument("--overload-duration-s", type=float, default=30.0)
    parser.add_argument(
        "--pin", action="store_true", help="server on core 0, load generator on core 1"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    server_cpus = None
    if args.pin:
        server_cpus = {0}
        os.sched_setaffinity(0, {1})
    document: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "zero.toml"
        profile.write_text(ZERO_PROFILE)
        for predictor in args.predictors.split(","):
            with running_server(server_flags(predictor, profile), cpus=server_cpus) as server:
                document[f"predictor_{predictor}"] = asyncio.run(zero_cost_suite(server, args))
            print(f"predictor {predictor}: done", flush=True)
    flags = ["--engine", "sim", "--cost-model", "llama3-8b-h100", "--predictor", "none"]
    flags += ["--max-queue", str(args.overload_queue), "--max-batch-size", "4"]
    with running_server(flags, cpus=server_cpus) as server:
        document["overload"] = asyncio.run(overload_suite(server, args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_overhead.json").write_text(json.dumps(document, indent=1) + "\n")
    table = format_tables(document, args)
    (args.out / "gateway_overhead.md").write_text(table + "\n")
    plot_overload(document["overload"], args.out / "gateway_overhead.png")
    print(table)


if __name__ == "__main__":
    main()
