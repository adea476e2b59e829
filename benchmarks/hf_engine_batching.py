"""Throughput of the `hf` engine: one forward per request vs batched forwards (issue: hf batching).

A random Llama (hidden 256, 4 layers, vocab 1024) built in a temp dir, on CPU with one torch
thread; N requests (prompt 32 tokens, 64 output tokens each, fcfs, all admitted at once) run
through a real SchedulingLoop, first with `HFEngine(batch=False)` (the per-request baseline)
then batched, in the same process; the tokens must be identical. Reports output tokens/s,
best of --repeats runs after a warm-up.

    python benchmarks/hf_engine_batching.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from service.engines.hf import HFEngine  # noqa: E402
from service.protocol import GenerationRequest  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker.engine_host import build_loop, waiting_request  # noqa: E402

MODEL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1024,
         "max_position_embeddings": 512}  # fmt: skip


def build_model(path: Path, seed: int) -> None:
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    config = transformers.LlamaConfig.from_dict({**MODEL, **ids})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(config).save_pretrained(path)


def requests(num: int, prompt_tokens: int, output_tokens: int) -> list[GenerationRequest]:
    """`num` distinct prompts (deterministic ids) of `prompt_tokens`, `output_tokens` each."""
    return [
        GenerationRequest(
            f"r{i}",
            tuple(3 + (7 * i + 13 * k) % 1000 for k in range(prompt_tokens)),
            max_tokens=output_tokens,
            lo=1,
            hi=output_tokens,
            ignore_eos=True,
        )  # fmt: skip
        for i in range(num)
    ]


def run(engine: HFEngine, cfg: Settings, batch: list[GenerationRequest]) -> tuple[float, list[int]]:
    """Wall seconds to finish `batch` through a SchedulingLoop, and all tokens produced."""
    loop, _ = build_loop(cfg, engine)
    produced: list[int] = []
    started = time.perf_counter()
    for i, r in enumerate(batch):
        engine.add(i, r)
        loop.add_request(waiting_request(r, i))
    while loop.has_work:
        outcome = loop.step(time.time())
        produced.extend(outcome.tokens.values())
        for loop_id in outcome.finished:
            engine.release(loop_id, forget=True)
    return time.perf_counter() - started, produced


def best_of(
    repeats: int, engine: HFEngine, cfg: Settings, batch: list[GenerationRequest]
) -> tuple[float, list[int]]:
    """The fastest of `repeats` runs after one warm-up run (this machine is shared)."""
    run(engine, cfg, batch[:1])
    runs = [run(engine, cfg, batch) for _ in range(repeats)]
    return min(wall_s for wall_s, _ in runs), runs[0][1]


def measure(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    fields = {"engine": "hf", "model": str(path), "predictor": "none", "policy": "fcfs"}
    cfg = Settings.model_validate({**fields, "kv_tokens": 10**6})
    engines = {"per_request": HFEngine(cfg, 0, device="cpu", batch=False),
               "batched": HFEngine(cfg, 0, device="cpu")}  # fmt: skip
    rows = []
    for num in args.requests:
        batch = requests(num, args.prompt_tokens, args.output_tokens)
        results = {
            name: best_of(args.repeats, engine, cfg, batch) for name, engine in engines.items()
        }
        tokens = num * args.output_tokens
        row: dict[str, Any] = {"requests": num, "output_tokens": tokens}
        for name, (wall_s, _) in results.items():
            row[f"{name}_s"] = wall_s
            row[f"{name}_tokens_per_s"] = tokens / wall_s
        row["speedup"] = row["per_request_s"] / row["batched_s"]
        row["identical_tokens"] = results["per_request"][1] == results["batched"][1]
        print(f"N={num}: {row['speedup']:.2f}x, identical={row['identical_tokens']}")
        rows.append(row)
    return rows


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    doc = {"model": MODEL, "prompt_tokens": args.prompt_tokens, "repeats": args.repeats,
           "output_tokens": args.output_tokens, "torch_threads": 1, "torch": torch.__version__,
           "transformers": transformers.__version__, "cpu": platform.processor() or
           platform.machine(), "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hf_engine_batching.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# hf engine: per-request vs batched forwards\n",
        f"Random Llama {MODEL}, CPU, 1 torch thread; prompt {args.prompt_tokens} tokens, "
        f"{args.output_tokens} output tokens per request, all admitted at once; best of "
        f"{args.repeats} runs after a warm-up.\n",
        "Command: `python benchmarks/hf_engine_batching.py --out docs/benchmarks`\n",
        "| requests | per-request tok/s | batched tok/s | speedup | identical tokens |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['requests']} | {r['per_request_tokens_per_s']:.0f} | "
        f"{r['batched_tokens_per_s']:.0f} | {r['speedup']:.2f}x | {r['identical_tokens']} |"
        for r in rows
    ]
    (args.out / "hf_engine_batching.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ("per_request", "batched"):
        axis.plot([r["requests"] for r in rows], [r[f"{name}_tokens_per_s"] for r in rows],
                  marker="o", label=name.replace("_", "-"))  # fmt: skip
    axis.set(xlabel="requests decoding together", ylabel="output tokens/s", xscale="log")
    axis.set_title("hf engine on CPU (1 thread)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "hf_engine_batching.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp), args.seed)
        write(measure(Path(tmp), args), args)


if __name__ == "__main__":
    main()
