"""`kvsched simulate`: replay a trace through several batch formers and compare them.

Prints one table row per policy, shows a progress bar, writes the issue #2 JSON with `--json`
and a latency-distribution PNG with `--plot`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from algorithms import PREEMPTION_MODES, REGISTRY
from simulator.cost_model import PRESETS, load_cost_model
from simulator.experiment import ArrivalControl, Experiment, build_workload, interval_model
from simulator.report import format_table, plot_latencies
from simulator.traces import FORMATS, load_trace

DEFAULT_POLICIES = "vllm,fcfs,sf,mcsf,sorted-f-c,amax,amin,hsf"


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "simulate",
        help="replay a trace through batch formers on a cost model",
        description="Replay a request trace through batch formers and compare their latency.",
    )
    p.add_argument(
        "--trace", required=True, help="trace file (Azure CSV, Mooncake/canonical JSONL, Vidur CSV)"
    )
    p.add_argument("--format", choices=FORMATS, help="trace format (default: detect)")
    p.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated batch formers (default: {DEFAULT_POLICIES})",
    )
    p.add_argument(
        "--intervals",
        default="exact",
        help="exact | given | alpha=X | bins | global, optionally ',miss=P'; or model=PATH|default "
        "(a learned predictor; needs prompts in the trace, and refines running requests), "
        "optionally ',online' (recalibrated from each finished request, as kvsched serve does)",
    )
    p.add_argument(
        "--cost-model",
        default="llama3-8b-h100",
        help=f"preset ({', '.join(PRESETS)}) or a .toml/.json profile",
    )
    p.add_argument("--kv-tokens", type=int, help="override the KV capacity M in tokens")
    p.add_argument("--max-batch-size", type=int, help="cap on running requests (max_num_seqs)")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        metavar="N",
        help="chunked prefill with a budget of N tokens per iteration (default: off)",
    )
    p.add_argument(
        "--preemption",
        choices=PREEMPTION_MODES,
        default="resume",
        help="what an evicted request keeps: its tokens, re-prefilled with its prompt when it "
        "is admitted again (resume, vLLM's behaviour; default), or nothing (restart, the "
        "papers' model)",
    )
    arrivals = p.add_mutually_exclusive_group()
    arrivals.add_argument("--rate-scale", type=float, help="divide the trace's gaps by X")
    arrivals.add_argument("--rate", type=float, help="Poisson arrivals at R req/s")
    arrivals.add_argument("--backlog", action="store_true", help="everything arrives at t=0")
    p.add_argument("--limit", type=int, help="keep the first N requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="POLICY.KEY=VALUE",
        help="batch-former parameter, e.g. amin.bound_after_eviction=g+1",
    )
    p.add_argument("--json", type=Path, help="write the results document here")
    p.add_argument("--plot", type=Path, help="write a latency-distribution PNG here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def parse_params(items: list[str], policies: list[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        policy, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--param {item!r}: expected POLICY.KEY=VALUE")
        if policy not in policies:
            raise ValueError(f"--param {item!r}: policy {policy!r} is not in --policies")
        params.setdefault(policy, {})[key] = _coerce(value)
    return params


def _coerce(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def run(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in REGISTRY]
    if unknown or not policies:
        raise ValueError(f"unknown policy {unknown}; choose from {', '.join(REGISTRY)}")
    cost_model = load_cost_model(args.cost_model, kv_tokens=args.kv_tokens)
    trace = load_trace(args.trace, args.format)
    control = ArrivalControl(args.rate_scale, args.rate, args.backlog, args.limit)
    predictor = interval_model(args.intervals)
    workload = build_workload(
        trace,
        args.intervals,
        seed=args.seed,
        arrivals=control,
        kv_capacity_tokens=cost_model.kv_capacity_tokens,
        predictor=predictor,
    )
    experiment = Experiment(
        workload,
        cost_model,
        str(args.trace),
        args.intervals,
        args.seed,
        max_batch_size=args.max_batch_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        refiner=predictor,
        preemption=args.preemption,
        params=parse_params(args.param, policies),
    )
    show = not args.no_progress and sys.stderr.isatty()
    results = experiment.run(policies, show_progress=show)
    document = experiment.document(results)
    unit = "iterations" if cost_model.unit else "seconds"
    print(
        f"{args.trace}: {len(workload)} requests, cost model {cost_model.name}, "
        f"M = {cost_model.kv_capacity_tokens} tokens, intervals {args.intervals}, "
        f"{args.preemption} preemption, times in {unit}"
    )
    baseline = "vllm" if "vllm" in results else None
    print(format_table(document["results"], baseline=baseline))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot:
        plot_latencies(results, args.plot, title=f"{Path(args.trace).name} - {cost_model.name}")
    return 0


def list_policies(args: argparse.Namespace) -> int:
    for name, cls in REGISTRY.items():
        signature = inspect.signature(cls.__init__)
        params = [
            f"{p.name}={p.default!r}"
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY
        ]
        summary = (inspect.getdoc(cls) or "").splitlines()[0]
        print(f"{name:<11} {summary}")
        if params:
            print(f"{'':<11} params: {', '.join(params)}")
    return 0
