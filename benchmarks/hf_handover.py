"""hf prefill/decode hand-over on CPU (issue 15): the same requests through 1 prefill + 1 decode
worker (the KV cache moves between them) and through 2 mixed workers, on a random Llama built
here (nothing is downloaded).

Run: python benchmarks/hf_handover.py   (a few minutes on 2 cores)
Writes docs/benchmarks/hf_handover.{json,md,png}. Each configuration runs a real `WorkerPool`
(spawned workers, OMP_NUM_THREADS=1 each) without HTTP; all requests are submitted at t=0
(a saturated backlog), greedy, ignore_eos. Reports output throughput, mean/p99 end-to-end
latency and TTFT, hand-over bytes and time per request (from the workers' reports), and
checks that both layouts stream identical tokens.
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from service.metrics import Metrics  # noqa: E402
from service.pool.pool import WorkerPool  # noqa: E402
from service.protocol import GenerationRequest, WorkerStats  # noqa: E402
from service.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
WORDS = [f"w{i}" for i in range(60)]
SPECIALS = ["[UNK]", "<s>", "</s>"]


def build_model(path: Path, hidden: int, layers: int, heads: int) -> None:
    """A WordLevel tokenizer and a random Llama (seed 0), saved to `path`."""
    import tokenizers
    import torch
    import transformers

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=2 * hidden,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)


def make_requests(n: int, prompt: tuple[int, int], output: int) -> list[GenerationRequest]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = int(rng.integers(prompt[0], prompt[1] + 1))
        words = rng.integers(3, 63, size=length - 1).tolist()
        out.append(
            GenerationRequest(
                f"b{i}", (1, *words), max_tokens=output, lo=1, hi=output, ignore_eos=True
            )
        )
    return out


class Recorder(Metrics):
    def __init__(self) -> None:
        super().__init__("bench")
        self.reports: list[WorkerStats] = []

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        super().observe_worker(stats, policy)
        self.reports.append(stats)


def serve(settings: Settings, requests: list[GenerationRequest]) -> dict[str, Any]:
    """All requests at t=0 through a pool; latencies, tokens and the workers' reports."""
    metrics = Recorder()
    pool = WorkerPool(settings, metrics=metrics)

    async def one(req: GenerationRequest, t0: float) -> tuple[list[int], float, float]:
        tokens: list[int] = []
        first = 0.0
        async for event in pool.generate(req):
            if event.token_ids and not tokens:
                first = time.perf_counter() - t0
            tokens.extend(event.token_ids)
            if event.finish_reason is not None and event.error:
                raise RuntimeError(event.error)
        return tokens, first, time.perf_counter() - t0

    async def main() -> tuple[list[tuple[list[int], float, float]], float]:
        await asyncio.wait_for(pool.start(), 120)
        try:
            t0 = time.perf_counter()
            results = await asyncio.wait_for(asyncio.gather(*(one(r, t0) for r in requests)), 1200)
            return results, time.perf_counter() - t0
        finally:
            await asyncio.wait_for(pool.stop(1.0), 60)

    results, makespan = asyncio.run(main())
    e2e = np.array([r[2] for r in results])
    ttft = np.array([r[1] for r in results])
    reports = metrics.reports
    handover_s = [s for r in reports for s in r.handover_s]
    num_output = sum(len(r[0]) for r in results)
    return {
        "tokens": {req.request_id: r[0] for req, r in zip(requests, results, strict=True)},
        "makespan_s": makespan,
        "throughput_tok_s": num_output / makespan,
        "e2e_mean_s": float(e2e.mean()),
        "e2e_p99_s": float(np.percentile(e2e, 99)),
        "ttft_mean_s": float(ttft.mean()),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "handovers": len(handover_s),
        "handover_bytes_per_request": (
            sum(r.handover_bytes for r in reports) / len(handover_s) if handover_s else 0.0
        ),
        "handover_latency_mean_ms": 1e3 * float(np.mean(handover_s)) if handover_s else 0.0,
        "handover_latency_p99_ms": (
            1e3 * float(np.percentile(handover_s, 99)) if handover_s else 0.0
        ),
        "handover_copy_mean_ms": (
            1e3 * sum(r.handover_copy_s for r in reports) / len(handover_s) if handover_s else 0.0
        ),
        "handover_tokens": sum(r.handover_tokens for r in reports),
        "prompt_tokens_by_worker": {
            str(w): sum(r.prompt_tokens for r in reports if r.worker_id == w) for w in (0, 1)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--prompt-min", type=int, default=128)
    parser.add_argument("--prompt-max", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned workers share the cores
    requests = make_requests(args.requests, (args.prompt_min, args.prompt_max), args.output_tokens)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp), args.hidden, args.layers, args.heads)
        base: dict[str, Any] = {
            "engine": "hf", "model": tmp, "predictor": "none", "policy": "fcfs",
            "kv_tokens": 64_000, "max_batch_size": args.max_batch_size, "workers": 2,
            "worker_stall_timeout_s": 120.0,
        }  # fmt: skip
        layouts: dict[str, dict[str, Any]] = {
            "mixed x2": {},
            "prefill 1 + decode 1": {"prefill_workers": 1},
        }
        for name, extra in layouts.items():
            runs[name] = serve(Settings(**base, **extra), requests)
            print(name, {k: v for k, v in runs[name].items() if k != "tokens"}, flush=True)
    names = list(runs)
    same = runs[names[0]]["tokens"] == runs[names[1]]["tokens"]
    result = {
        "command": "python benchmarks/hf_handover.py",
        "args": {k: str(v) for k, v in vars(args).items()},
        "identical_tokens": same,
        "runs": {n: {k: v for k, v in r.items() if k != "tokens"} for n, r in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hf_handover.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [
        "| layout | throughput (tok/s) | e2e mean (s) | e2e p99 (s) | TTFT mean (s) | TTFT p99 (s)"
        " | hand-overs | KV bytes / req | hand-over mean (ms) | p99 (ms) | copy mean (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        rows.append(
            f"| {name} | {r['throughput_tok_s']:.1f} | {r['e2e_mean_s']:.2f} | "
            f"{r['e2e_p99_s']:.2f} | {r['ttft_mean_s']:.2f} | {r['ttft_p99_s']:.2f} | "
            f"{r['handovers']} | {r['handover_bytes_per_request']:,.0f} | "
            f"{r['handover_latency_mean_ms']:.1f} | {r['handover_latency_p99_ms']:.1f} | "
            f"{r['handover_copy_mean_ms']:.2f} |"
        )
    rows.append("")
    rows.append(f"Identical tokens in both layouts: {same}.")
    (args.out / "hf_handover.md").write_text("\n".join(rows) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    metrics = [
        ("throughput_tok_s", "output tokens/s"),
        ("e2e_mean_s", "mean e2e latency (s)"),
        ("e2e_p99_s", "p99 e2e latency (s)"),
    ]
    for ax, (key, label) in zip(axes, metrics, strict=True):
        ax.bar(names, [runs[n][key] for n in names], color=["#777", "#3a7"])
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("hf engine on CPU: 2 mixed workers vs 1 prefill + 1 decode (KV handed over)")
    fig.tight_layout()
    fig.savefig(args.out / "hf_handover.png", dpi=110)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
