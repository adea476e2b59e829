"""`kvsched bench`: replay a trace against an OpenAI-compatible server, report like vLLM's bench.

Prints completed/failed, request and token throughput, mean/median/p99 TTFT, TPOT, ITL and E2E
(milliseconds) and goodput (requests meeting every `--goodput` SLO), and writes them with the
per-request lists to `--json` (vLLM's key names). Exit status: 0 when every request completed,
1 when some failed (the first error is printed), 2 on bad input or an unreachable /v1/models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from service.commands.loadgen import PATHS, RequestResult, build_requests, first_model, replay
from simulator.arrivals import with_arrivals
from simulator.traces import load_trace

METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives in milliseconds (None: not checked)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for value in (self.ttft_ms, self.tpot_ms, self.e2e_ms):
            if value is not None and not value > 0:
                raise ValueError(f"--goodput: SLOs must be > 0 ms, got {value}")

    def met(self, result: RequestResult) -> bool:
        tpot_s = result.tpot_s or 0.0
        checks = (
            (self.ttft_ms, result.ttft_s),
            (self.tpot_ms, tpot_s),
            (self.e2e_ms, result.e2e_s),
        )
        return result.ok and all(slo is None or value * 1e3 <= slo for slo, value in checks)


def parse_goodput(text: str | None) -> Slo | None:
    """`ttft:MS,tpot:MS,e2e:MS` (any subset) -> Slo."""
    if not text:
        return None
    values: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition(":")
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise ValueError(f"--goodput {item!r}: expected ttft:MS, tpot:MS or e2e:MS")
        try:
            values[f"{key}_ms"] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number") from None
    return Slo(**values)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "bench",
        help="replay a trace against an OpenAI-compatible server",
        description="Replay a trace against an OpenAI-compatible server (streaming) and report "
        "TTFT, TPOT, ITL, end-to-end latency and goodput, like `vllm bench serve`.",
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--trace", required=True, type=Path, help="trace file (any simulate format)")
    arrivals = p.add_mutually_exclusive_group()
    arrivals.add_argument("--rate-scale", type=float, help="divide the trace's gaps by X")
    arrivals.add_argument("--rate", type=float, help="Poisson arrivals at R req/s")
    p.add_argument("--limit", type=int, help="send only the first N requests")
    p.add_argument("--model", help="model name to ask for (default: the first in /v1/models)")
    p.add_argument("--endpoint", choices=tuple(PATHS), default="completions")
    p.add_argument("--max-concurrency", type=int, help="at most N requests in flight")
    p.add_argument("--goodput", metavar="ttft:MS,tpot:MS,e2e:MS", help="SLOs for goodput")
    p.add_argument("--json", type=Path, help="write the results document here")
    p.add_argument("--seed", type=int, default=0, help="for --rate and synthetic prompts")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    slo = parse_goodput(args.goodput)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be >= 1")
    trace = with_arrivals(
        load_trace(args.trace), rate_scale=args.rate_scale, rate=args.rate,
        limit=args.limit, seed=args.seed,
    )  # fmt: skip
    requests = build_requests(trace, args.seed)
    url = args.url.rstrip("/")
    model = args.model or _discover_model(url)
    show = not args.no_progress and sys.stderr.isatty()
    with tqdm(total=len(requests), unit="req", disable=not show, file=sys.stderr) as bar:
        results, duration_s = asyncio.run(
            replay(
                url, requests, endpoint=args.endpoint, model=model,
                max_concurrency=args.max_concurrency, on_done=lambda _: bar.update(),
                timeout_s=args.timeout,
            )
        )  # fmt: skip
    summary = summarize(results, duration_s, slo)
    print(format_report(summary, f"{url} ({args.endpoint}, model {model}), trace {args.trace}"))
    if args.json is not None:
        document = {"date": datetime.now(UTC).isoformat(), "url": url, "model": model}
        document |= {"endpoint": args.endpoint, "trace": str(args.trace), **summary}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"kvsched bench: {len(failed)} of {len(results)} requests failed; first: "
              f"request {failed[0].index}: {failed[0].error}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _discover_model(url: str) -> str:
    try:
        return asyncio.run(first_model(url))
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot list models at {url}/v1/models ({exc}); pass --model") from exc


def _stats(name: str, values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    if not len(ms):
        return {f"{k}_{name}_ms": 0.0 for k in ("mean", "median", "std", "p99")}
    return {
        f"mean_{name}_ms": float(ms.mean()),
        f"median_{name}_ms": float(np.median(ms)),
        f"std_{name}_ms": float(ms.std()),
        f"p99_{name}_ms": float(np.percentile(ms, 99)),
    }


def summarize(results: list[RequestResult], duration_s: float, slo: Slo | None) -> dict[str, Any]:
    """vLLM bench serve's result keys (times in ms), plus goodput fraction and per-request data."""
    ok = [r for r in results if r.ok]
    duration_s = max(duration_s, 1e-9)
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = sum(slo.met(r) for r in ok) if slo is not None else len(ok)
    summary: dict[str, Any] = {
        "num_prompts": len(results),
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": good / duration_s if slo is not None else None,
        "goodput_fraction": good / len(results) if slo is not None and results else None,
        "slos_ms": None
        if slo is None
        else {"ttft": slo.ttft_ms, "tpot": slo.tpot_ms, "e2e": slo.e2e_ms},  # fmt: skip
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    summary |= _stats("ttft", [r.ttft_s for r in ok])
    summary |= _stats("tpot", [t for r in ok if (t := r.tpot_s) is not None])
    summary |= _stats("itl", [gap for r in ok for gap in r.itl_s])
    summary |= _stats("e2el", [r.e2e_s for r in ok])
    summary |= {
        "input_lens": [r.prompt_tokens for r in results],
        "output_lens": [r.output_tokens for r in results],
        "expected_output_lens": [r.expected_tokens for r in results],
        "ttfts": [r.ttft_s for r in results],
        "e2els": [r.e2e_s for r in results],
        "itls": [r.itl_s for r in results],
        "errors": [r.error for r in results],
    }
    return summary


def format_report(summary: dict[str, Any], title: str) -> str:
    rows = [
        ("Successful requests:", f"{summary['completed']}"),
        ("Failed requests:", f"{summary['failed']}"),
        ("Benchmark duration (s):", f"{summary['duration']:.2f}"),
        ("Total input tokens:", f"{summary['total_input_tokens']}"),
        ("Total generated tokens:", f"{summary['total_output_tokens']}"),
        ("Request throughput (req/s):", f"{summary['request_throughput']:.2f}"),
        ("Output token throughput (tok/s):", f"{summary['output_throughput']:.2f}"),
        ("Total token throughput (tok/s):", f"{summary['total_token_throughput']:.2f}"),
    ]
    if summary["request_goodput"] is not None:
        rows.append(("Request goodput (req/s):", f"{summary['request_goodput']:.2f}"))
        rows.append(("Goodput fraction (%):", f"{100 * summary['goodput_fraction']:.1f}"))
    labels = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}
    for name in METRICS:
        for stat in ("mean", "median", "p99"):
            value = summary[f"{stat}_{name}_ms"]
            rows.append((f"{stat.capitalize()} {labels[name]} (ms):", f"{value:.2f}"))
    lines = [f"{' Serving Benchmark Result ':=^60}", title]
    lines += [f"{label:<45}{value:>15}" for label, value in rows]
    return "\n".join([*lines, "=" * 60])
