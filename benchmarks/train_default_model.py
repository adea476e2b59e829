"""Train the default length model shipped in the package: predictors/models/default.kvp (issue 3).

P2 LightGBM quantiles on log length, split CQR with d_lo = d_hi = 0.05, trained on the shipped
corpus data/text/lengths.jsonl.gz minus its documented test split (`predictors.default.
split_train_test`: 20% of the prompts, seed 0, by prompt). Prints the held-out evaluation.
Runs exactly `kvsched predictor train --data CORPUS --out FILE --kind quantile --d-lo 0.05
--d-hi 0.05 --seed 0 --test-fraction 0.2`; `--json PATH` also writes the held-out report.

    python benchmarks/train_default_model.py [--json docs/benchmarks/default_model.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from predictors.datasets import load_samples
from predictors.default import DEFAULT_MODEL_PATH, SPLIT_SEED, TEST_FRACTION, split_train_test
from predictors.evaluate import evaluate
from predictors.model import LengthModel
from service.cli import main as kvsched

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data/text/lengths.jsonl.gz"
MAX_TOKENS = 4096


def write_report(data: Path, model_path: Path, out: Path) -> None:
    """The held-out evaluation of the written model, with the test split's identity."""
    _, test = split_train_test(load_samples(data), TEST_FRACTION, SPLIT_SEED)
    test_ids = "\n".join(sorted(set(test.prompt_ids))).encode("utf-8")
    report = evaluate(LengthModel.load(model_path), test, max_tokens=MAX_TOKENS)
    document = {
        "model": str(
            model_path.relative_to(ROOT) if model_path.is_relative_to(ROOT) else model_path
        ),
        "data": str(data.relative_to(ROOT) if data.is_relative_to(ROOT) else data),
        "test_fraction": TEST_FRACTION,
        "split_seed": SPLIT_SEED,
        "num_test_prompts": len(set(test.prompt_ids)),
        "test_prompt_ids_sha256": hashlib.sha256(test_ids).hexdigest(),
        "max_tokens": MAX_TOKENS,
        **report,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--json", type=Path, help="also write the held-out report here")
    args = parser.parse_args()
    code = kvsched(
        [
            "predictor",
            "train",
            *("--data", str(args.data), "--out", str(args.out), "--kind", "quantile"),
            *("--d-lo", "0.05", "--d-hi", "0.05", "--seed", str(SPLIT_SEED)),
            *("--test-fraction", str(TEST_FRACTION), "--max-tokens", str(MAX_TOKENS)),
        ]
    )
    if code == 0 and args.json:
        write_report(args.data, args.out, args.json)
    sys.exit(code)


if __name__ == "__main__":
    main()
