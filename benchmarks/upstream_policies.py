"""The `openai-upstream` gateway's admission policies in front of two vLLM-like servers.

Two upstreams are `kvsched serve --engine sim --policy vllm` (vLLM's own scheduling on the
simulated device, paced by the cost model at `--speedup`); the gateway is `kvsched serve
--engine openai-upstream` in front of both. Baseline (`pass-through`): the gateway admits
everything at once (`--policy vllm` with a capacity far above the upstreams'), which is what a
plain load balancer in front of vLLM does: each upstream's own scheduler sees every request.
Against it, the gateway's batch former decides admissions with the upstreams' true KV capacity.
`kvsched bench` replays the trace's arrivals (scaled by `--rate-scale`) with each request's
length fixed by `max_tokens` + `ignore_eos`, so the intervals the gateway plans with are exact:
this measures what admission control can do, not the predictor.

    python benchmarks/upstream_policies.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _serve_harness import ROOT, running_server
from tqdm import tqdm

TRACE = ROOT / "data/traces/azure_conv_2023.csv"
KVSCHED = [sys.executable, "-m", "service.cli"]
PASS_THROUGH_KV_TOKENS = 10**9  # far above any upstream: the gateway holds nothing back


def run_config(name: str, policy: str, gateway_kv: int, rate_scale: float,
               args: argparse.Namespace, tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Fresh upstreams and gateway; the bench's per-request times in model seconds."""
    upstream_flags = ["--engine", "sim", "--policy", "vllm", "--predictor", "none"]
    upstream_flags += ["--cost-model", args.cost_model, "--kv-tokens", str(args.kv_tokens)]
    upstream_flags += ["--speedup", str(args.speedup), "--max-batch-size", "256"]
    out = tmp / f"bench_{name}_{rate_scale}.json"
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(running_server(upstream_flags)) for _ in range(2)]
        gateway_flags = ["--engine", "openai-upstream", "--policy", policy, "--predictor", "none"]
        gateway_flags += ["--upstream-kv-tokens", str(gateway_kv), "--max-batch-size", "256"]
        gateway_flags += ["--upstream-timeout-s", "600"]
        for up in ups:
            gateway_flags += ["--upstream", up.url]
        gateway = stack.enter_context(running_server(gateway_flags))
        command = [*KVSCHED, "bench", "--url", gateway.url, "--trace", str(args.trace)]
        command += ["--limit", str(args.limit), "--rate-scale", str(rate_scale * args.speedup)]
        command += ["--json", str(out), "--no-progress"]
        subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    s = args.speedup
    return {
        "policy": policy,
        "e2e_s": (np.asarray(doc["e2els"]) * s).tolist(),
        "ttft_s": (np.asarray(doc["ttfts"]) * s).tolist(),
        "failed": int(doc["failed"]),
        "errors": [e for e in doc["errors"] if e][:3],
    }


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One row per "scale/gateway" run, with ratios to the pass-through run at the same load."""
    rows = {}
    for name, run in runs.items():
        base = runs[name.split("/")[0] + "/pass-through"]
        b_mean, b_p99 = np.mean(base["e2e_s"]), np.percentile(base["e2e_s"], 99)
        e2e, ttft = np.asarray(run["e2e_s"]), np.asarray(run["ttft_s"])
        rows[name] = {
            "completed": len(e2e),
            "failed": run["failed"],
            "mean_e2e_s": float(e2e.mean()),
            "p99_e2e_s": float(np.percentile(e2e, 99)),
            "mean_ttft_s": float(ttft.mean()),
            "p99_ttft_s": float(np.percentile(ttft, 99)),
            "mean_vs_pass_through": float(e2e.mean() / b_mean),
            "p99_vs_pass_through": float(np.percentile(e2e, 99) / b_p99),
        }
    return rows


def table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"Two sim upstreams (`--policy vllm`, {args.cost_model}, {args.kv_tokens} KV tokens each), "
        f"{args.limit} requests of {Path(args.trace).name} per run; times in model seconds.",
        "",
        "| rate scale | gateway | completed | failed | mean e2e | p99 e2e | mean TTFT | p99 TTFT "
        "| mean vs pass-through | p99 vs pass-through |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        scale, name = key.split("/", 1)
        lines.append(
            f"| {scale} | {name} | {r['completed']} | {r['failed']} | {r['mean_e2e_s']:.2f} "
            f"| {r['p99_e2e_s']:.2f} | {r['mean_ttft_s']:.2f} | {r['p99_ttft_s']:.2f} "
            f"| {r['mean_vs_pass_through']:.3f}x | {r['p99_vs_pass_through']:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[str, Any]], scales: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scales), figsize=(6 * len(scales), 4), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for name, run in runs.items():
            if name.split("/")[0] != str(scale):
                continue
            e2e = np.sort(run["e2e_s"])
            ax.plot(e2e, np.arange(1, len(e2e) + 1) / len(e2e), label=name.split("/", 1)[1])
        ax.set_xlabel("end-to-end latency (model s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"openai-upstream gateway, rate scale {scale}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--rate-scales", default="1.5,3")
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--cost-model", default="llama2-70b-a100x2")
    parser.add_argument("--kv-tokens", type=int, default=16000)
    parser.add_argument("--policies", default="fcfs,mcsf,asf")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    scales = [float(s) for s in args.rate_scales.split(",")]
    gateways = [("pass-through", "vllm", PASS_THROUGH_KV_TOKENS)]
    gateways += [(p, p, args.kv_tokens) for p in args.policies.split(",")]
    configs = [(scale, *gateway) for scale in scales for gateway in gateways]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale, name, policy, kv in tqdm(configs, desc="runs", file=sys.stderr):
            runs[f"{scale}/{name}"] = run_config(name, policy, kv, scale, args, Path(tmp))
    rows = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upstream_policies.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )
    text = table(rows, args)
    (args.out / "upstream_policies.md").write_text(text)
    plot(runs, scales, args.out / "upstream_policies.png")
    print(text)


if __name__ == "__main__":
    main()
