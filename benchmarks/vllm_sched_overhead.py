"""Overhead of KvschedScheduler.schedule() against vLLM's own AsyncScheduler, same states.

States (issue 7): 256 running with 1,000 waiting, and 512 running with 10,000 waiting, the
batch full (max_num_seqs = running) and KV ample, decoding as vLLM's engine runs it
(pipelined: step N+1 scheduled before step N's output is applied; fake model outputs). Every
scheduler gets the same seeded requests; steps are interleaved across schedulers so machine
load hits all alike. Request objects are created in arrival order (`--creation-order arrival`,
the default), as a server creates them: the requests an FCFS scheduler runs then sit back to back
in memory, which alone makes vLLM's own schedule() about 0.3 ms faster at 512 running than on
any other set of requests. `--creation-order shuffled` creates every scheduler's requests in the
same seeded shuffled order instead, which removes that advantage (a sensitivity check).
The time is the calling thread's CPU time (time.thread_time): on a shared
2-core machine wall time mostly measures the other tenants (its median is reported too).
Reports the median schedule() time, the ratio to vLLM's and the time added
(our median minus vLLM's; the amin target of 2 ms applies to that: vLLM's own step with 512
running already takes longer than 2 ms on a 2-core machine). Runs the
measurement in the vLLM venv (.ci/vllm-env.sh) and writes the table and plot from here:

    python benchmarks/vllm_sched_overhead.py --out docs/benchmarks/vllm_sched_overhead
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from algorithms import CLAIRVOYANT, REGISTRY

ROOT = Path(__file__).resolve().parent.parent
# every registered policy the plug-in accepts (clairvoyant ones need the true lengths)
POLICIES = tuple(name for name in REGISTRY if name not in CLAIRVOYANT)
STATES = ((256, 1_000), (512, 10_000))
TARGET_RATIO = 1.2
AMIN_TARGET_MS = 2.0


def _add_requests(h: Any, sched: Any, specs: list[Any], shuffled: bool, seed: int) -> None:
    """Create the request objects (in a seeded shuffled order or in arrival order), then add
    them to `sched` in arrival order."""
    import random

    order = list(range(len(specs)))
    if shuffled:
        random.Random(seed).shuffle(order)
    made = {}
    for i in order:
        prompt, length = specs[i]
        xargs = {"kvsched_lo": max(1, length // 2), "kvsched_hi": length * 2}
        made[i] = h.make_request(f"r{i}", prompt, 4096, xargs, float(i))
    for i in range(len(specs)):
        sched.add_request(made[i])


def _measure(model_dir: Path, out: Path, steps: int, warmup: int, creation_order: str) -> None:
    """Inside the venv: build one scheduler per policy (+ vLLM's) per state, time schedule()."""
    import random
    import statistics
    import time

    from tqdm import tqdm

    sys.path.insert(0, str(ROOT / "tests" / "vllm"))
    h = importlib.import_module("vllm_harness")  # tests/vllm: builds schedulers by hand

    from service.vllm_ext.scheduler import KvschedScheduler

    if not (model_dir / "config.json").exists():
        h.build_model(model_dir)
    results: list[dict[str, Any]] = []
    for num_running, num_waiting in STATES:
        rng = random.Random(num_running)
        specs = [
            ([rng.randrange(3, 300) for _ in range(rng.randrange(16, 64))], rng.randrange(64, 512))
            for _ in range(num_running + num_waiting)
        ]
        setup = h.Setup(
            num_blocks=num_running * 40,
            max_num_seqs=num_running,
            max_num_batched_tokens=num_running * 64,
        )
        scheds: dict[str, Any] = {}
        for name in ("vllm-own", *POLICIES):
            os.environ["KVSCHED_POLICY"] = name if name != "vllm-own" else "amin"
            cls = h.AsyncScheduler if name == "vllm-own" else KvschedScheduler
            sched = scheds[name] = h.make_scheduler(model_dir, setup, cls)
            _add_requests(h, sched, specs, creation_order == "shuffled", num_running + 1)
            sched.kvsched_pending = None
        times: dict[str, list[float]] = {name: [] for name in scheds}
        walls: dict[str, list[float]] = {name: [] for name in scheds}
        label = f"{num_running} running / {num_waiting} waiting"
        for step in tqdm(range(warmup + steps), desc=label, file=sys.stderr):
            for name, sched in scheds.items():
                wall, start = time.perf_counter(), time.thread_time()
                output = sched.schedule()
                elapsed = time.thread_time() - start
                wall = time.perf_counter() - wall
                mro = h.fake_output(sched, output)
                if sched.kvsched_pending is not None:
                    sched.update_from_output(*sched.kvsched_pending)
                sched.kvsched_pending = (output, mro)
                if step >= warmup:
                    times[name].append(elapsed)
                    walls[name].append(wall)
                    assert len(sched.running) == num_running, (name, len(sched.running))
        base = statistics.median(times["vllm-own"])
        for name, samples in times.items():
            median = statistics.median(samples)
            results.append(
                {
                    "num_running": num_running,
                    "num_waiting": num_waiting,
                    "scheduler": name,
                    "median_ms": median * 1e3,
                    "p90_ms": statistics.quantiles(samples, n=10)[-1] * 1e3,
                    "ratio_to_vllm": median / base,
                    "wall_median_ms": statistics.median(walls[name]) * 1e3,
                    "steps": len(samples),
                    "creation_order": creation_order,
                }
            )
    out.write_text(json.dumps(results, indent=1))


def _run_in_venv(steps: int, warmup: int, creation_order: str) -> list[dict[str, Any]]:
    python = subprocess.run(
        [str(ROOT / ".ci" / "vllm-env.sh")], capture_output=True, text=True, check=False
    )
    if python.returncode != 0:
        sys.exit(f"vllm_sched_overhead: no vLLM environment:\n{python.stderr[-2000:]}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        cmd = [python.stdout.strip().splitlines()[-1], __file__, "--measure", tmp]
        cmd += ["--steps", str(steps), "--warmup", str(warmup)]
        cmd += ["--creation-order", creation_order]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        data: list[dict[str, Any]] = json.loads(out.read_text())
    return data


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| state | scheduler | CPU median ms | p90 ms | added ms | ratio to vLLM | wall median ms "
        "| target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    base = {r["num_running"]: r["median_ms"] for r in results if r["scheduler"] == "vllm-own"}
    for r in results:
        added = r["median_ms"] - base[r["num_running"]]
        state = f"{r['num_running']} / {r['num_waiting']:,}"
        target = "baseline" if r["scheduler"] == "vllm-own" else f"< {TARGET_RATIO:.2f}x"
        ok = r["ratio_to_vllm"] < TARGET_RATIO
        if r["scheduler"] == "amin" and r["num_waiting"] == 10_000:
            target += f", < {AMIN_TARGET_MS} ms added"
            ok = ok and added < AMIN_TARGET_MS
        verdict = "" if r["scheduler"] == "vllm-own" else (" met" if ok else " MISSED")
        lines.append(
            f"| {state} | {r['scheduler']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{added:+.3f} | {r['ratio_to_vllm']:.2f}x | {r['wall_median_ms']:.3f} | "
            f"{target}{verdict} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATES), figsize=(11, 4), sharey=False)
    for ax, (num_running, num_waiting) in zip(axes, STATES, strict=True):
        rows = [r for r in results if r["num_running"] == num_running]
        names = [r["scheduler"] for r in rows]
        ax.bar(names, [r["median_ms"] for r in rows], color="tab:blue")
        base = rows[0]["median_ms"]
        ax.axhline(base * TARGET_RATIO, color="tab:red", ls="--", label="vLLM x 1.2")
        ax.set_title(f"{num_running} running / {num_waiting:,} waiting")
        ax.set_ylabel("median schedule() CPU ms")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/vllm_sched_overhead")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--creation-order",
        choices=("shuffled", "arrival"),
        default="arrival",
        help="order the request objects are created in (memory layout; see the docstring)",
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        model, out = args.measure / "model", args.measure / "results.json"
        _measure(model, out, args.steps, args.warmup, args.creation_order)
        return
    results = _run_in_venv(args.steps, args.warmup, args.creation_order)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    table = _markdown(results)
    command = "python benchmarks/vllm_sched_overhead.py"
    if args.creation_order != "arrival":
        command += f" --creation-order {args.creation_order}"
    args.out.with_suffix(".md").write_text(
        f"# vLLM schedule() overhead\n\n`{command}`\n\nRequest objects created in "
        f"{args.creation_order} order.\n\n" + table
    )
    _plot(results, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
