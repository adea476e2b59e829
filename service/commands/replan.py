"""`kvsched replan`: has the traffic shifted since a plan was made, and should the plan change?

Reads the plan in force (the JSON `kvsched plan --json` writes, which holds the length sample it
was planned for) and recent traffic (any trace `simulate` reads, or the server's completion log),
keeps the last `--window` requests, and compares their lengths with the plan's sample (mean, p99
and the two-sample KS statistic of output lengths). It then predicts what the plan in force
achieves on the recent traffic, searches the best plan for it, and says whether to switch: only
when the traffic shifted and the plan in force misses the latency target, or the new plan gains
at least `--min-gain`. The switch is hot when only batch sizes and encode frequency change, and
a redeploy otherwise (docs/planner.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simulator.cost_model import load_cost_model
from simulator.exegpt.config import ClusterSpec, Config, Workload
from simulator.exegpt.shifts import Replan, ShiftDetector, ShiftReport, ShiftThresholds, replan
from simulator.traces import FORMATS, load_trace


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "replan",
        help="has the workload shifted since a plan was made; which plan now, and switch?",
        description="Compare recent traffic with the length sample a plan was made for, predict "
        "the plan in force on it, search the best plan for it and say whether to switch.",
    )
    p.add_argument("--plan", type=Path, required=True, help="the plan in force (plan --json)")
    p.add_argument(
        "--traffic",
        type=Path,
        required=True,
        help="recent requests: a trace simulate reads, or serve's --completion-log",
    )
    p.add_argument("--format", choices=FORMATS, help="format of --traffic (default: detect)")
    p.add_argument("--window", type=int, default=2000, help="most recent requests compared")
    p.add_argument("--min-samples", type=int, default=200, help="fewer: never a shift")
    p.add_argument("--mean-change", type=float, default=0.10, help="relative, output mean")
    p.add_argument("--p99-change", type=float, default=0.10, help="relative, output p99")
    p.add_argument("--ks", type=float, default=0.10, help="KS statistic threshold")
    p.add_argument("--min-gain", type=float, default=0.05, help="switch below this gain: no")
    p.add_argument("--redeploy-s", type=float, default=30.0, help="cost of a layout change")
    p.add_argument("--cost-model", help="override the plan's cost model (preset or file)")
    p.add_argument("--latency-target-s", type=float, help="override the plan's latency target")
    p.add_argument("--json", type=Path, help="write the verdict here")
    p.set_defaults(handler=run)


def _load_plan(path: Path) -> dict[str, Any]:
    try:
        plan: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--plan {path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--plan {path}: line {exc.lineno}: {exc.msg}") from None
    missing = [
        k
        for k in ("config", "cluster", "latency_target_s", "reference", "throughput_rps")
        if not isinstance(plan, dict) or k not in plan
    ]
    if missing:
        raise ValueError(
            f"--plan {path}: not a plan written by `kvsched plan --json` (missing {missing}); "
            "plans written before the reference sample was stored must be made again"
        )
    return plan


def _reference(plan: dict[str, Any], path: Path) -> Workload:
    ref = plan["reference"]
    try:
        return Workload(
            np.asarray(ref["prompt_tokens"], dtype=np.int64),
            np.asarray(ref["output_tokens"], dtype=np.int64),
            "plan",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"--plan {path}: bad reference sample: {exc}") from None


def _config(plan: dict[str, Any], path: Path) -> tuple[Config, int, ClusterSpec]:
    config = dict(plan["config"])
    replicas = int(config.pop("replicas", 1))
    try:
        return Config(**config), replicas, ClusterSpec(**plan["cluster"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--plan {path}: bad config: {exc}") from None


def _check_args(args: argparse.Namespace) -> None:
    if args.window < 1 or not 1 <= args.min_samples <= args.window:
        raise ValueError("need --window >= 1 and 1 <= --min-samples <= --window")
    if args.min_gain < 0 or args.redeploy_s < 0:
        raise ValueError("--min-gain and --redeploy-s must be >= 0")
    target = args.latency_target_s
    if target is not None and not (math.isfinite(target) and target > 0):
        raise ValueError(f"--latency-target-s must be > 0, got {target}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    plan = _load_plan(args.plan)
    reference = _reference(plan, args.plan)
    current, replicas, cluster = _config(plan, args.plan)
    cost = load_cost_model(args.cost_model or plan.get("cost_model_source", plan["cost_model"]))
    target = args.latency_target_s or float(plan["latency_target_s"])
    thresholds = ShiftThresholds(
        args.window, args.min_samples, args.mean_change, args.p99_change, args.ks
    )
    trace = load_trace(args.traffic, args.format)
    detector = ShiftDetector(reference, thresholds)
    for prompt, output in zip(trace.prompt_tokens, trace.output_tokens, strict=True):
        detector.observe(int(prompt), int(output))
    report = detector.check()
    window = detector.window_workload()
    outcome = replan(current, replicas, window, cost, cluster, target, redeploy_s=args.redeploy_s)
    doc = _document(args, plan, window, report, outcome, target)
    _print(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _decide(
    report: ShiftReport, outcome: Replan, min_gain: float, min_samples: int
) -> tuple[bool, str]:
    if report.samples < min_samples:
        return False, f"keep: {report.samples} recent requests, too few to tell (< {min_samples})"
    if not report.shifted:
        return False, "keep: no shift"
    if outcome.new.config is None:
        return False, "keep: no plan meets the latency target on the recent traffic either"
    if not outcome.old_meets_target:
        return True, "switch: the plan in force now misses the latency target"
    if outcome.gain >= 1.0 + min_gain:
        return True, f"switch: {outcome.gain:.2f}x the throughput"
    return False, f"keep: the best plan gains only {outcome.gain:.2f}x (< {1 + min_gain:.2f}x)"


def _document(
    args: argparse.Namespace,
    plan: dict[str, Any],
    window: Workload,
    report: ShiftReport,
    outcome: Replan,
    target: float,
) -> dict[str, Any]:
    switch, why = _decide(report, outcome, args.min_gain, args.min_samples)
    new = outcome.new
    best = None
    if new.config is not None and new.prediction is not None:
        best = {
            "label": new.config.label(),
            "config": {**dataclasses.asdict(new.config), "replicas": new.replicas},
            "throughput_rps": new.replicas * new.prediction.throughput_rps,
            "latency_s": new.prediction.latency_s,
        }
    return {
        "plan": str(args.plan),
        "traffic": str(args.traffic),
        "latency_target_s": target,
        "window": {
            "samples": len(window),
            "mean_prompt_tokens": window.mean_prompt_tokens,
            "mean_output_tokens": window.mean_output_tokens,
            "p99_output_tokens": window.p99_output_tokens,
        },
        "shift": {
            "shifted": report.shifted,
            "mean_change": report.mean_change,
            "p99_change": report.p99_change,
            "ks": report.ks,
            "reasons": list(report.reasons),
        },
        "current": {
            "label": plan.get("label"),
            "planned_throughput_rps": plan["throughput_rps"],
            "throughput_rps": outcome.old_throughput_rps,
            "latency_s": outcome.old_latency_s,
            "meets_target": outcome.old_meets_target,
        },
        "best": best,
        # None when there is no new plan, or the plan in force misses the target (no ratio)
        "gain": outcome.gain if best is not None and math.isfinite(outcome.gain) else None,
        "switch_kind": "hot" if outcome.hot else "redeploy",
        "switch_cost_s": outcome.reconfigure_s,
        "switch": switch,
        "reason": why,
    }


def _print(doc: dict[str, Any]) -> None:
    w, s, c = doc["window"], doc["shift"], doc["current"]
    print(
        f"{doc['traffic']}: last {w['samples']} requests "
        f"(mean prompt {w['mean_prompt_tokens']:.0f}, "
        f"mean output {w['mean_output_tokens']:.0f}, p99 output {w['p99_output_tokens']})"
    )
    detail = f"output mean {s['mean_change']:+.0%}, p99 {s['p99_change']:+.0%}, KS {s['ks']:.3f}"
    verdict = "; ".join(s["reasons"]) if s["shifted"] else "none"
    print(f"shift:      {verdict} ({detail})")
    meets = "meets" if c["meets_target"] else "MISSES"
    print(
        f"in force:   {c['label']}: planned {c['planned_throughput_rps']:.2f} req/s, now "
        f"{c['throughput_rps']:.2f} req/s, S99 latency {c['latency_s']:.2f} s ({meets} the "
        f"{doc['latency_target_s']:g} s target)"
    )
    best = doc["best"]
    if best is None:
        print("best:       no configuration meets the target on this traffic")
    else:
        print(
            f"best:       {best['label']} x{best['config']['replicas']}: "
            f"{best['throughput_rps']:.2f} req/s, S99 latency {best['latency_s']:.2f} s, "
            f"gain {'-' if doc['gain'] is None else format(doc['gain'], '.2f') + 'x'}, "
            f"switch {doc['switch_kind']} ({doc['switch_cost_s']:g} s)"
        )
    print(doc["reason"])
