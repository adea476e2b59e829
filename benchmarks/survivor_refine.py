"""Remaining-length re-prediction (issue 13): the survivor model vs the refinement ladder.

One base model per split (`predictors.model.fit`, quantile, 5% + 5%, seed 0, survivor=True);
"ladder" is the same file with its survivor model removed (today's refiner), "survivor" uses
it. Both are scored by `predictors.evaluate.survivor_report` (coverage of the refined interval
among survivors y > k at each ladder checkpoint k, asked with the admitted interval as the
scheduling loop asks, and Kendall tau of the refined lo / hi against the remaining length
y - k) on: the held-out 20% of the corpus (in distribution), AlpacaEval -> Arena-Hard v0.1 and
the reverse (split as in benchmarks/predictors_cross.py). End to end: `kvsched simulate` with
`--intervals model=PATH` for asf and amin on the first LIMIT Azure conv arrivals carrying
held-out corpus rows (as benchmarks/policies_vs_vllm.py builds them), both model files, at a
KV capacity small enough (16k tokens, 8x the trace's rate) that the bounds decide admissions.

    python benchmarks/survivor_refine.py --out docs/benchmarks
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.predictors_cross import scenarios
from predictors.base import LengthSamples
from predictors.datasets import load_samples
from predictors.default import split_train_test
from predictors.evaluate import evaluate
from predictors.model import LengthModel, fit
from simulator.traces import load_trace

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data/text/lengths.jsonl.gz"
TRACE = ROOT / "data/traces/azure_conv_2023.csv"
MAX_TOKENS = 4096
SEED = 0


def splits(samples: LengthSamples) -> dict[str, tuple[LengthSamples, LengthSamples]]:
    cross = scenarios(samples)
    return {
        "in-distribution": split_train_test(samples),
        "alpaca -> arena": cross["alpaca -> arena"],
        "arena -> alpaca": cross["arena -> alpaca"],
    }


def compare(model: LengthModel, test: LengthSamples) -> dict[str, Any]:
    ladder = dataclasses.replace(model, survivor=None)
    return {
        name: evaluate(m, test, max_tokens=MAX_TOKENS)["survivors"]
        for name, m in (("ladder", ladder), ("survivor", model))
    }


def write_trace(path: Path, test: LengthSamples, limit: int) -> None:
    arrivals = load_trace(TRACE).arrival_s[:limit]
    rows = np.random.default_rng(SEED).integers(0, len(test), size=len(arrivals))
    with path.open("w") as out:
        for t, i in zip(arrivals.tolist(), rows.tolist(), strict=True):
            row = {
                "arrival_s": t,
                "prompt_tokens": int(test.prompt_tokens[i]),
                "output_tokens": int(test.output_tokens[i]),
                "prompt": test.prompts[i],
                "model": test.models[i],
            }
            out.write(json.dumps(row) + "\n")


def simulate(trace: Path, model: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        "kvsched", "simulate", "--trace", str(trace),
        "--format", "jsonl", "--intervals", f"model={model}", "--policies", args.policies,
        "--cost-model", args.cost_model, "--rate-scale", str(args.rate_scale),
        "--kv-tokens", str(args.kv_tokens),
        "--max-batch-size", "256", "--max-num-batched-tokens", "8192",
        "--seed", str(SEED), "--json", str(out), "--no-progress",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--policies", default="asf,amin")
    parser.add_argument("--cost-model", default="llama3-8b-h100")
    parser.add_argument("--rate-scale", type=float, default=8.0)
    parser.add_argument("--kv-tokens", type=int, default=16000)  # memory pressure, so bounds matter
    args = parser.parse_args()
    samples = load_samples(CORPUS)
    result: dict[str, Any] = {"offline": {}, "simulate": {}, "args": vars(args) | {"out": None}}
    models: dict[str, LengthModel] = {}
    for name, (train, test) in splits(samples).items():
        model = fit(train, seed=SEED, survivor=True)
        models[name] = model
        assert model.survivor is not None
        result["offline"][name] = compare(model, test) | {
            "c_lo": list(model.survivor.c_lo),
            "c_hi": list(model.survivor.c_hi),
            "n_train": len(train),
            "n_test": len(test),
        }
        print(name, "done", flush=True)
    test = split_train_test(samples)[1]
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        write_trace(trace, test, args.limit)
        model = models["in-distribution"]
        for name, m in (("ladder", dataclasses.replace(model, survivor=None)), ("survivor", model)):
            path = Path(tmp) / f"{name}.kvp"
            m.save(path)
            result["simulate"][name] = simulate(trace, path, Path(tmp) / f"{name}.json", args)
            print("simulate", name, "done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "survivor_refine.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
