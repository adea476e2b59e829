"""Length predictors across data sets and target models, offline and with online recalibration
(issue 13, the predictor benchmark's cross-dataset part; `predictors_eval.py` is in-distribution).

Three shifts, each trained with `predictors.model.fit` (quantile model, 5% + 5%, seed 0) on one
part of data/text/lengths.jsonl.gz and scored on another it never saw:
  * alpaca -> arena: trained on every AlpacaEval row, tested on Arena-Hard v0.1 (other prompts,
    other target models);
  * arena -> alpaca: the reverse;
  * leave llama out: trained on the non-Llama target models' rows of the documented train prompts
    (`predictors.default.split_train_test`), tested on the 8 Llama models' rows of the test
    prompts (family = "llama" in the lower-cased model name).
Offline = split conformal as shipped (`evaluate`). Online = `evaluate_online`: the test rows
replayed one by one, each predicted before its completion updates the calibrator (what
`kvsched predictor eval --online` and `kvsched serve` do), summarised over the whole stream and
after the first 200 completions. The headline replay is in a seeded shuffled order (seeds 0-4
give the range): the corpus lists each prompt's answers from every target model back to back,
and a replay in that order lets the calibrator learn a prompt from its own earlier rows, which
flatters alpha and tau; the data-order replay is reported beside it. Cost: median us per request
of `predict` on batches of 64 on one thread, plus the calibrator's work (apply + observe).

    python benchmarks/predictors_cross.py --out docs/benchmarks
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # one CPU core, set before numpy / lightgbm load

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from predictors.base import LengthSamples
from predictors.datasets import load_samples
from predictors.default import split_train_test
from predictors.evaluate import evaluate
from predictors.model import LengthModel, fit
from predictors.online import OnlineCalibrator
from predictors.online_eval import WARMUP, evaluate_online

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data/text/lengths.jsonl.gz"
MAX_TOKENS = 4096
BATCH = 64
SEED = 0
SHUFFLE_SEEDS = range(5)
BAND = (0.85, 0.95)
KEYS = (
    "n", "coverage", "miss_below_lo", "miss_above_hi", "mean_width", "median_width",
    "median_alpha", "kendall_tau_lo", "kendall_tau_hi",
)  # fmt: skip


def _rows(samples: LengthSamples, keep: np.ndarray) -> LengthSamples:
    return samples.take(np.flatnonzero(keep).astype(np.int64))


def scenarios(samples: LengthSamples) -> dict[str, tuple[LengthSamples, LengthSamples]]:
    """name -> (train rows, test rows), test rows in data order."""
    source = np.array([s.split("/", 1)[0] for s in samples.sources])
    alpaca, arena = source == "alpaca_eval", source == "arena_hard"
    llama = np.array(["llama" in m.lower() for m in samples.models])
    train_ids = set(split_train_test(samples)[0].prompt_ids)
    in_train = np.array([p in train_ids for p in samples.prompt_ids])
    return {
        "alpaca -> arena": (_rows(samples, alpaca), _rows(samples, arena)),
        "arena -> alpaca": (_rows(samples, arena), _rows(samples, alpaca)),
        "leave llama out": (
            _rows(samples, in_train & ~llama),
            _rows(samples, ~in_train & llama),
        ),
    }


def predict_cost_us(model: LengthModel, test: LengthSamples) -> float:
    """Median microseconds per request of `predict` over shuffled batches of 64 (one thread)."""
    order = np.random.default_rng(0).permutation(len(test)).astype(np.int64)
    batches = [
        test.take(order[s : s + BATCH]).batch(MAX_TOKENS) for s in range(0, 50 * BATCH, BATCH)
    ]
    batches = [b for b in batches if len(b) == BATCH] or [test.batch(MAX_TOKENS)]
    model.predict(batches[0])
    times = []
    for batch in batches * 3:
        start = time.perf_counter_ns()
        model.predict(batch)
        times.append((time.perf_counter_ns() - start) / 1e3 / len(batch))
    return float(np.median(times))


def online_cost_us(n: int = 20_000) -> float:
    """Microseconds per request of the calibrator alone: apply one interval, observe it."""
    cal = OnlineCalibrator(0.05, 0.05)
    rng = np.random.default_rng(0)
    y = rng.integers(1, 2000, size=n)
    lo, hi, cap = np.array([50]), np.array([900]), np.array([MAX_TOKENS])
    start = time.perf_counter_ns()
    for i in range(n):
        a, b = cal.apply(lo, hi, cap)
        cal.observe(int(a[0]), int(b[0]), int(y[i]), censored=False)
    return (time.perf_counter_ns() - start) / 1e3 / n


def _pick(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in KEYS}


def shuffled(test: LengthSamples, seed: int) -> LengthSamples:
    return test.take(np.random.default_rng(seed).permutation(len(test)).astype(np.int64))


def run_scenario(train: LengthSamples, test: LengthSamples) -> dict[str, Any]:
    started = time.perf_counter()
    model = fit(train, seed=SEED)
    fit_s = time.perf_counter() - started
    offline = evaluate(model, test, max_tokens=MAX_TOKENS)
    online = evaluate_online(model, test, max_tokens=MAX_TOKENS)
    mixed = evaluate_online(model, shuffled(test, SEED), max_tokens=MAX_TOKENS)
    seeds = [
        evaluate_online(model, shuffled(test, seed), max_tokens=MAX_TOKENS)["after_warmup"]
        for seed in SHUFFLE_SEEDS
    ]
    return {
        "n_train": len(train),
        "n_test": len(test),
        "train_prompts": len(set(train.prompt_ids)),
        "test_prompts": len(set(test.prompt_ids)),
        "train_models": sorted(set(train.models)),
        "test_models": sorted(set(test.models)),
        "fit_s": fit_s,
        "offsets_log1p": [model.offsets.lo, model.offsets.hi],
        "offline": _pick(offline),
        "online": _pick(online),
        "online_after_warmup": _pick(online["after_warmup"]),
        "online_blocks": online["blocks"],
        "online_final": online["calibrator"],
        "online_shuffled": _pick(mixed),
        "online_shuffled_after_warmup": _pick(mixed["after_warmup"]),
        "online_shuffled_blocks": mixed["blocks"],
        "online_shuffled_seeds_coverage": [
            min(c["coverage"] for c in seeds),
            max(c["coverage"] for c in seeds),
        ],
        "online_shuffled_seeds_in_band": [in_band(c) for c in seeds],
        "offline_blocks": _blocks(model, test),
        "predict_us_per_request": predict_cost_us(model, test),
    }


def _blocks(model: LengthModel, test: LengthSamples) -> list[dict[str, float]]:
    test = shuffled(test, SEED)  # the order of the online replay it is drawn against
    caps = np.full(len(test), MAX_TOKENS, dtype=np.int64)
    lo, hi = model.predict(test.batch(caps))
    y = np.minimum(test.output_tokens, caps)
    covered = (lo <= y) & (y <= hi)
    return [
        {"start": s, "coverage": float(np.mean(covered[s : s + 100]))}
        for s in range(0, len(y), 100)
    ]


def _git() -> dict[str, Any]:
    def out(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    return {
        "commit": out("rev-parse", "HEAD").strip(),
        "dirty_predictors": bool(out("status", "--porcelain", "predictors")),
    }


def in_band(stats: dict[str, Any]) -> bool:
    cov, below, above = stats["coverage"], stats["miss_below_lo"], stats["miss_above_hi"]
    return bool(BAND[0] <= cov <= BAND[1] and 0.025 <= below <= 0.075 and 0.025 <= above <= 0.075)


def run(data: Path) -> dict[str, Any]:
    samples = load_samples(data)
    results = {name: run_scenario(*parts) for name, parts in scenarios(samples).items()}
    for r in results.values():
        r["target_met_after_warmup"] = in_band(r["online_shuffled_after_warmup"])
    return {
        "data": str(data.relative_to(ROOT) if data.is_relative_to(ROOT) else data),
        "max_tokens": MAX_TOKENS,
        "warmup": WARMUP,
        "target_coverage": 0.90,
        "band": {"two_sided": list(BAND), "per_side_miss": [0.025, 0.075]},
        "online_us_per_request": online_cost_us(),
        "load_avg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "git": _git(),
        "scenarios": results,
    }


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


MODES = (
    ("offline (split conformal)", "offline"),
    ("online, shuffled, whole stream", "online_shuffled"),
    ("online, shuffled, after 200", "online_shuffled_after_warmup"),
    ("online, data order, after 200", "online_after_warmup"),
)
HEAD = (
    "scenario", "mode", "n", "coverage", "miss < lo", "miss > hi", "median width",
    "median alpha", "tau lo", "tau hi", "us/request",
)  # fmt: skip


def _row(name: str, mode: str, st: dict[str, Any], cost: float) -> str:
    cells = [
        name, mode, f"{st['n']:,}", f"{st['coverage']:.3f}", f"{st['miss_below_lo']:.3f}",
        f"{st['miss_above_hi']:.3f}", f"{st['median_width']:.0f}", f"{st['median_alpha']:.3f}",
        _fmt(st["kendall_tau_lo"], ".3f"), _fmt(st["kendall_tau_hi"], ".3f"), f"{cost:.0f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def table(r: dict[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    for name, s in r["scenarios"].items():
        for mode, key in MODES:
            extra = r["online_us_per_request"] if key != "offline" else 0.0
            lines.append(_row(name, mode, s[key], s["predict_us_per_request"] + extra))
    return lines


def markdown(r: dict[str, Any]) -> str:
    met = []
    for name, s in r["scenarios"].items():
        low, high = s["online_shuffled_seeds_coverage"]
        verdict = "met" if s["target_met_after_warmup"] else "missed"
        met.append(f"{name}: {verdict} (coverage over 5 shuffles {low:.3f}-{high:.3f})")
    return "\n".join([
        "# Length predictors across data sets, offline and online",
        "",
        f"`python benchmarks/predictors_cross.py`: {r['data']}, max_tokens {r['max_tokens']},"
        " target 0.90 (5% + 5%). Online = `predictors.online` (step 0.2), replayed in a seeded"
        " shuffled order (seed 0) and in data order (grouped by prompt).",
        "",
        *table(r),
        "",
        f"Target (after the first {r['warmup']} completions of the shuffled replay: coverage in"
        " 0.85-0.95 and each side's miss in 0.025-0.075): " + "; ".join(met) + ".",
        "",
        f"Online recalibration adds {r['online_us_per_request']:.1f} us per request (apply +"
        " observe); us/request = `predict` on batches of 64 on one thread, plus that"
        f" (1-min load average {r['load_avg_1min']:.1f} on {r['cpu_count']} cores).",
        "",
    ])  # fmt: skip


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["scenarios"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        s = r["scenarios"][name]
        on, off = s["online_shuffled_blocks"], s["offline_blocks"]
        ax.plot([b["start"] + 100 for b in off], [b["coverage"] for b in off], color="tab:gray",
                label="offline (split conformal)")  # fmt: skip
        ax.plot([b["start"] + 100 for b in on], [b["coverage"] for b in on], color="tab:blue",
                label="online (shuffled replay)")  # fmt: skip
        ax.axhspan(*BAND, color="tab:green", alpha=0.12, label="0.85-0.95")
        ax.axvline(r["warmup"], color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set(title=name, xlabel="completions", ylim=(0.4, 1.0))
    axes[0].set_ylabel("coverage per block of 100 requests")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks")
    args = parser.parse_args()
    result = run(args.data)
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictors_cross.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "predictors_cross.md").write_text(text)
    plot(result, args.out / "predictors_cross.png")
    print(f"wrote {args.out}/predictors_cross.{{json,md,png}}")


if __name__ == "__main__":
    main()
