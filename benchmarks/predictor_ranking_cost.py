"""Predictor ranking, unseen target models and cost, before and after issue 13 (docs/benchmarks.md).

(1) Cross-dataset: train on the corpus's AlpacaEval rows, test on its Arena-Hard v0.1 rows (every
test model unseen), and the reverse; plus the documented in-distribution split. "before" is
the earlier recipe (version-1 features, 200 trees x 31 leaves, no unseen-model handling),
"after" the current default recipe. (2) Leave one target-model family out of training and
predict it. (3) Cost of `predict`, one thread, per request at batch 64 and batch 1, for the
earlier shipped file (git show BASELINE:predictors/models/default.kvp) and the current one.
(4) Optional (--gateway): `kvsched serve --engine sim` at zero model time, open loop at
--rate req/s, requests WITHOUT ignore_eos so the predictor runs (the gateway skips it for
ignore_eos requests), predictor none / earlier file / current file, interleaved repeats.

    python benchmarks/predictor_ranking_cost.py --gateway --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from predictors.base import LengthSamples
from predictors.datasets import load_samples
from predictors.default import DEFAULT_MODEL_PATH, split_train_test
from predictors.evaluate import evaluate
from predictors.families import model_family
from predictors.model import LengthModel, fit
from predictors.quantile_model import QuantileConfig

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data/text/lengths.jsonl.gz"
BASELINE = "2ef0b69"  # the last commit before issue 13's predictor changes
KEYS = ("n", "coverage", "miss_below_lo", "miss_above_hi", "median_alpha", "kendall_tau_lo",
        "kendall_tau_hi", "winkler")  # fmt: skip
OLD_CONFIG = QuantileConfig(num_trees=200, learning_rate=0.05, num_leaves=31)


def fit_recipe(recipe: str, train: LengthSamples) -> LengthModel:
    if recipe == "before":
        return fit(train, seed=0, config=OLD_CONFIG, unseen_aware=False, lexicon=False)
    return fit(train, seed=0)


def accuracy(families: list[str]) -> dict[str, Any]:
    samples = load_samples(CORPUS)
    alpaca = np.array([s.startswith("alpaca_eval") for s in samples.sources])
    a, h = samples.take(np.flatnonzero(alpaca)), samples.take(np.flatnonzero(~alpaca))
    setups = {
        "in-distribution (20% prompts held out)": split_train_test(samples),
        "AlpacaEval -> Arena-Hard": (a, h),
        "Arena-Hard -> AlpacaEval": (h, a),
    }
    fams = np.array([model_family(m) for m in samples.models])
    for family in families:
        rows = fams == family
        setups[f"leave out family {family}"] = (
            samples.take(np.flatnonzero(~rows)),
            samples.take(np.flatnonzero(rows)),
        )
    out: dict[str, Any] = {}
    for name, (train, test) in setups.items():
        for recipe in ("before", "after"):
            start = time.perf_counter()
            model = fit_recipe(recipe, train)
            report = evaluate(model, test, max_tokens=4096)
            row = {k: report[k] for k in KEYS}
            row["fit_s"] = time.perf_counter() - start
            out[f"{name} | {recipe}"] = row
            print(f"{name} | {recipe}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()),
                  flush=True)  # fmt: skip
    return out


def cost(models: dict[str, Path], repeats: int) -> dict[str, Any]:
    samples = load_samples(CORPUS)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(samples), 64 * 40, replace=False)
    sub = samples.take(rows)
    b64 = [sub.take(np.arange(i * 64, (i + 1) * 64)).batch(4096) for i in range(40)]
    b1 = [sub.take(np.array([i])).batch(4096) for i in range(1000)]
    out: dict[str, Any] = {}
    for name, path in models.items():
        model = LengthModel.load(path)
        for label, batches in (("batch64", b64), ("batch1", b1)):
            per_request: list[float] = []
            for _ in range(repeats):
                for batch in batches:
                    t0 = time.perf_counter()
                    model.predict(batch)
                    per_request.append((time.perf_counter() - t0) / len(batch) * 1e6)
            us = np.array(per_request)
            out[f"{name} | {label}"] = {
                "mean_us": float(us.mean()),
                "p50_us": float(np.median(us)),
                "p99_us": float(np.quantile(us, 0.99)),
            }
            print(f"cost {name} {label}: {out[f'{name} | {label}']}", flush=True)
    return out


def gateway(models: dict[str, str], rate: float, duration_s: float, repeats: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _serve_harness import running_server  # noqa: PLC0415
    from gateway_overhead import PROMPT, ZERO_PROFILE, open_loop  # noqa: PLC0415

    payload = json.dumps({"prompt": PROMPT, "max_tokens": 1}).encode()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "zero.toml"
        profile.write_text(ZERO_PROFILE)
        for rep in range(repeats):
            for name, predictor in models.items():
                flags = ["--engine", "sim", "--cost-model", str(profile), "--predictor", predictor]
                with running_server(flags) as server:
                    asyncio.run(open_loop(server, "POST", "/v1/completions", payload, rate, 2.0))
                    r = asyncio.run(
                        open_loop(server, "POST", "/v1/completions", payload, rate, duration_s)
                    )
                r.pop("records", None)
                lat = r.get("latency_200", {})
                out.setdefault(name, []).append(lat)
                print(f"gateway {name} rep {rep}: {lat}", flush=True)
    return out


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = document["accuracy"]
    setups = list(dict.fromkeys(k.split(" | ")[0] for k in acc))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    x = np.arange(len(setups))
    for ax, key, target in ((axes[0], "kendall_tau_lo", 0.30), (axes[1], "coverage", 0.90)):
        for j, recipe in enumerate(("before", "after")):
            vals = [acc[f"{s} | {recipe}"][key] for s in setups]
            ax.bar(x + (j - 0.5) * 0.4, vals, 0.4, label=recipe)
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target}")
        ax.set_xticks(x, [s.replace(" (20% prompts held out)", "") for s in setups],
                      rotation=35, ha="right", fontsize=8)  # fmt: skip
        ax.set_title(key)
        ax.legend(fontsize=8)
    costs = document["cost"]
    names = list(costs)
    axes[2].bar(range(len(names)), [costs[n]["mean_us"] for n in names], label="mean")
    axes[2].scatter(range(len(names)), [costs[n]["p99_us"] for n in names], color="r",
                    label="p99", zorder=3)  # fmt: skip
    axes[2].axhline(200, color="k", ls="--", lw=1, label="target 200 us (batch 64)")
    axes[2].set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    axes[2].set_title("predict cost per request, one thread (us)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="llama,openai,mistral,qwen,claude")
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--gateway", action="store_true")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--gateway-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the unseen-model lines, once per name, are expected here
    document: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    document["accuracy"] = accuracy([f for f in args.families.split(",") if f])
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "default_before.kvp"
        blob = subprocess.run(
            ["git", "show", f"{BASELINE}:predictors/models/default.kvp"],
            cwd=ROOT, check=True, capture_output=True,
        ).stdout  # fmt: skip
        old.write_bytes(blob)
        models = {"default before": old, "default after": DEFAULT_MODEL_PATH}
        document["cost"] = cost(models, args.cost_repeats)
        if args.gateway:
            served = {"none": "none", "default before": str(old), "default after": "default"}
            document["gateway"] = gateway(served, args.rate, args.duration_s, args.gateway_repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictor_ranking_cost.json").write_text(json.dumps(document, indent=1) + "\n")
    plot(document, args.out / "predictor_ranking_cost.png")
    print(f"wrote {args.out / 'predictor_ranking_cost.json'} and .png")


if __name__ == "__main__":
    main()
