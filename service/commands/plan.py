"""`kvsched plan`: pick the ExeGPT configuration with the most throughput under a latency target.

Samples input/output lengths from a trace, runs the branch and bound (docs/planner.md, "XScheduler")
over RRA and WAA on a cost model, compares with the static- and continuous-batching baselines, and
writes a JSON plan whose "serve" section names worker roles, counts and batch limits
(docs/planner.md). No configuration meeting the target is an error (exit 2), not an empty plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from simulator.cost_model import PRESETS, CostModel, load_cost_model
from simulator.exegpt.audit import DEFAULT_TOLERANCE, KnobAudit, audit_monotonicity
from simulator.exegpt.baselines import continuous_batching, static_batching
from simulator.exegpt.config import (
    PRESET_WEIGHT_KV_TOKENS,
    ClusterSpec,
    Config,
    SearchSpace,
    Workload,
)
from simulator.exegpt.search import Evaluator, SearchResult, branch_and_bound, exhaustive
from simulator.exegpt.xsim import length_stats
from simulator.traces import FORMATS, load_trace


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "plan",
        help="ExeGPT planner: best RRA/WAA configuration under a latency target",
        description="Search ExeGPT configurations (RRA/WAA, batch sizes, encode frequency, "
        "micro-batches, partial TP) for the most throughput under a latency target.",
    )
    p.add_argument("--trace", required=True, help="trace with input/output lengths")
    p.add_argument("--format", choices=FORMATS, help="trace format (default: detect)")
    p.add_argument(
        "--cost-model",
        "--profile",  # the older spelling, still accepted
        dest="cost_model",
        required=True,
        help=f"cost model, as for simulate: preset ({', '.join(PRESETS)}) or .toml/.json profile",
    )
    p.add_argument("--gpus", type=int, required=True, help="devices (cost-model workers), N")
    p.add_argument("--latency-target-s", type=float, required=True, help="bound on the S99 output")
    p.add_argument("--samples", type=int, default=500, help="requests sampled from the trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-kv-tokens", type=int, help="weights in KV tokens (default: preset)")
    p.add_argument("--tolerance", type=float, default=0.0, help="branch-and-bound tolerance")
    p.add_argument("--exhaustive", action="store_true", help="also run the exhaustive search")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    p.add_argument(
        "--audit",
        action="store_true",
        help="also audit the knob directions the branch and bound assumes over the grid",
    )
    p.add_argument("--json", type=Path, help="write the plan here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if not (math.isfinite(args.latency_target_s) and args.latency_target_s > 0):
        raise ValueError(f"--latency-target-s must be > 0, got {args.latency_target_s}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0, got {args.tolerance}")


def serve_section(config: Config, replicas: int, prompt_tokens: float, cost: str) -> dict[str, Any]:
    """Worker roles, counts and batch limits a serving deployment needs (docs/planner.md)."""
    common = {"count": replicas, "tp_degree": config.tp_degree}
    if config.policy == "rra":
        worker = {
            "role": "mixed",
            **common,
            "devices": config.num_gpus,
            "tp_devices": config.tp_gpus,
            "max_batch_size": config.decode_batch,
            "prefill_batch_size": config.encode_batch,
            "decode_steps_per_prefill": config.decode_steps,
        }
        return {"engine": "sim", "cost_model": cost, "workers": [worker]}
    enc_tp, dec_tp = config.tp_split()
    prefill = {
        "role": "prefill",
        **common,
        "devices": config.encode_gpus,
        "tp_devices": enc_tp,
        "max_batch_size": config.encode_batch,
        "max_num_batched_tokens": math.ceil(config.encode_batch * prompt_tokens),
    }
    decode = {
        "role": "decode",
        **common,
        "devices": config.decode_gpus,
        "tp_devices": dec_tp,
        "max_batch_size": config.decode_batch,
        "micro_batches": config.micro_batches,
    }
    return {"engine": "sim", "cost_model": cost, "workers": [prefill, decode]}


def _search_doc(result: SearchResult) -> dict[str, Any]:
    return {
        "evaluated": result.evaluated,
        "grid_size": result.grid_size,
        "search_s": result.elapsed_s,
        "throughput_rps": _total(result),
    }


def _total(result: SearchResult) -> float:
    return 0.0 if result.prediction is None else result.replicas * result.prediction.throughput_rps


def _no_plan(args: argparse.Namespace, evaluator: Evaluator) -> ValueError:
    return ValueError(
        f"no configuration meets --latency-target-s {args.latency_target_s:g} on {args.gpus} "
        f"devices with {args.cost_model} for {args.trace} (fastest evaluated: "
        f"{evaluator.min_latency_s():.3g} s); raise the target or add devices"
    )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    cost = load_cost_model(args.cost_model)
    weights = args.weight_kv_tokens
    if weights is None:
        weights = PRESET_WEIGHT_KV_TOKENS.get(cost.name, 0)
    cluster = ClusterSpec(args.gpus, weight_kv_tokens=weights)
    workload = Workload.from_trace(
        load_trace(args.trace, args.format), args.samples, seed=args.seed
    )
    stats = length_stats(workload)
    evaluator = Evaluator(stats, cost, cluster)
    result = branch_and_bound(evaluator, _space(), args.latency_target_s, tolerance=args.tolerance)
    if result.config is None or result.prediction is None:
        raise _no_plan(args, evaluator)
    document = _document(args, workload, cost.name, cluster, result)
    if args.exhaustive:
        full = exhaustive(Evaluator(stats, cost, cluster), _space(), args.latency_target_s)
        document["exhaustive"] = _search_doc(full)
    if args.audit:
        audits = audit_monotonicity(Evaluator(stats, cost, cluster), _space(), DEFAULT_TOLERANCE)
        document["audit"] = _audit_doc(audits)
    if not args.no_baselines:
        show = not args.no_progress and sys.stderr.isatty()
        document["baselines"] = _baselines(workload, cost, cluster, args.latency_target_s, show)
        static = document["baselines"]["static"]["throughput_rps"]
        document["gain_over_static"] = document["throughput_rps"] / static if static else None
    _print(document)
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _audit_doc(audits: dict[str, KnobAudit]) -> dict[str, Any]:
    """The monotonicity audit as the plan records it: the tolerance and each knob's counts."""
    return {
        "tolerance": DEFAULT_TOLERANCE,
        "knobs": [audit.to_dict() for audit in audits.values()],
    }


def _space() -> SearchSpace:
    return SearchSpace()


def _baselines(
    workload: Workload, cost: CostModel, cluster: ClusterSpec, target_s: float, show: bool
) -> dict[str, Any]:
    static = static_batching(workload, cost, cluster, target_s)
    continuous = continuous_batching(workload, cost, cluster, target_s, show_progress=show)
    return {"static": static.to_dict(), "continuous": continuous.to_dict()}


def _document(
    args: argparse.Namespace,
    workload: Workload,
    cost: str,
    cluster: ClusterSpec,
    result: SearchResult,
) -> dict[str, Any]:
    assert result.config is not None and result.prediction is not None
    config = result.config
    return {
        "policy": config.policy,
        "throughput_rps": _total(result),
        "latency_s": result.prediction.latency_s,
        "latency_target_s": args.latency_target_s,
        "config": {**dataclasses.asdict(config), "replicas": result.replicas},
        "label": config.label(),
        **_search_doc(result),
        "trace": str(args.trace),
        "workload": {
            "samples": len(workload),
            "seed": args.seed,
            "mean_prompt_tokens": workload.mean_prompt_tokens,
            "mean_output_tokens": workload.mean_output_tokens,
            "p99_output_tokens": workload.p99_output_tokens,
        },
        "cost_model": cost,
        "cost_model_source": args.cost_model,
        "cluster": dataclasses.asdict(cluster),
        # the sample the plan was made for: `kvsched replan` compares recent traffic with it
        "reference": {
            "prompt_tokens": workload.prompt_tokens.tolist(),
            "output_tokens": workload.output_tokens.tolist(),
        },
        "serve": serve_section(config, result.replicas, workload.mean_prompt_tokens, cost),
    }


def _print(doc: dict[str, Any]) -> None:
    w = doc["workload"]
    print(
        f"{doc['trace']}: {w['samples']} sampled requests "
        f"(mean prompt {w['mean_prompt_tokens']:.0f}, S99 output {w['p99_output_tokens']}), "
        f"cost model {doc['cost_model']}, "
        f"{doc['cluster']['num_gpus']} devices, latency target {doc['latency_target_s']:g} s"
    )
    replicas = doc["config"]["replicas"]
    print(f"best:       {doc['label']}  x{replicas} replica(s)")
    print(
        f"predicted:  {doc['throughput_rps']:.2f} req/s, "
        f"latency of the S99 output {doc['latency_s']:.2f} s"
    )
    print(
        f"search:     {doc['evaluated']} of {doc['grid_size']} configurations evaluated "
        f"({doc['search_s']:.2f} s)"
    )
    if "exhaustive" in doc:
        e = doc["exhaustive"]
        print(
            f"exhaustive: {e['evaluated']} evaluated ({e['search_s']:.2f} s), best "
            f"{e['throughput_rps']:.2f} req/s"
        )
    for name, base in doc.get("baselines", {}).items():
        if base["meets_target"]:
            print(
                f"{name + ':':<11} {base['throughput_rps']:.2f} req/s at {base['latency_s']:.2f} s "
                f"{base['setting']}"
            )
        else:
            print(f"{name + ':':<11} no setting meets the target")
    if doc.get("gain_over_static"):
        print(f"gain over static batching: {doc['gain_over_static']:.2f}x")
    if "audit" in doc:
        _print_audit(doc["audit"])


def _print_audit(audit: dict[str, Any]) -> None:
    """Per knob: pairs compared, violations of the assumed direction, the first example."""
    print(
        f"audit:      knob directions over the grid ({audit['tolerance']:.0%} tolerance); "
        "the branch and bound is sure to match exhaustive search only where violations are 0"
    )
    for knob in audit["knobs"]:
        line = (
            f"  {knob['knob']:<17} {knob['pairs']:>5} pairs, "
            f"{knob['throughput_violations']} throughput / "
            f"{knob['latency_violations']} latency violations"
        )
        if knob["examples"]:
            line += f"; e.g. {knob['examples'][0]}"
        print(line)
