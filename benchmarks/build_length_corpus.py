"""Build the shipped length corpus data/text/lengths.jsonl.gz from the real prompt/response sets.

Reads every data set folder under DATA (AlpacaEval model_outputs, Arena-Hard v0.1) with
`predictors.datasets`, counts tokens with the Llama-3 tokenizer and writes the canonical JSONL
(prompt, prompt_id, model, source, prompt_tokens, output_tokens; no output text), rows grouped
by prompt, gzipped byte-reproducibly. With --examples it also writes the small test slices in
data/text/examples/.

    python benchmarks/build_length_corpus.py PATH/TO/text --examples

PATH/TO/text holds `alpaca_eval/*.json` (tatsu-lab/alpaca_eval `results/<model>/model_outputs.json`)
and `arena_hard_v0.1/` (lmarena/arena-hard-auto); see data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from predictors.base import LengthSamples
from predictors.datasets import concat_samples, read_samples, write_samples

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data/text/lengths.jsonl.gz"
EXAMPLES = ROOT / "data/text/examples"
ALPACA_SLICES = ("gpt4_1106_preview.json", "Meta-Llama-3-8B-Instruct.json")
ARENA_MODELS = ("gpt-4-0314", "gpt-3.5-turbo-0125")
NUM_ALPACA_RECORDS = 20
NUM_ARENA_QUESTIONS = 15


def load_all(data: Path) -> LengthSamples:
    parts = []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        report = read_samples(folder)
        print(
            f"{folder.name}: {report.layout}, {len(report.files)} file(s), "
            f"{report.num_rows_read} rows read, {report.num_dropped_empty} dropped (0 tokens)"
        )
        parts.append(report.samples)
    return concat_samples(parts)


def grouped_by_prompt(samples: LengthSamples) -> LengthSamples:
    """Rows of one prompt made adjacent (prompts in order of first appearance), so gzip sees
    each repeated prompt text within its window: 0.4 MB instead of 2.5 MB."""
    first: dict[str, int] = {}
    for row, prompt_id in enumerate(samples.prompt_ids):
        first.setdefault(prompt_id, row)
    keys = np.array([first[p] for p in samples.prompt_ids], dtype=np.int64)
    return samples.take(np.argsort(keys, kind="stable"))


def summary(samples: LengthSamples) -> None:
    out = samples.output_tokens
    print(f"rows {len(samples)}, prompts {len(set(samples.prompt_ids))}, ", end="")
    print(f"models {len(set(samples.models))}")
    for source, n in sorted(Counter(samples.sources).items()):
        print(f"  {source}: {n}")
    q = np.percentile(out, [10, 50, 90, 99]).round().astype(int).tolist()
    print(f"output tokens: mean {out.mean():.0f}, P10/P50/P90/P99 {q}, max {out.max()}")
    print(
        f"prompt tokens: mean {samples.prompt_tokens.mean():.0f}, max {samples.prompt_tokens.max()}"
    )
    print(f"outputs >= 4000 tokens (likely truncated near 4096): {int((out >= 4000).sum())}")


def write_alpaca_slice(source: Path, target: Path) -> None:
    """The first records, formatted exactly as the originals (indent 2, compact, '/' escaped)."""
    records = json.loads(source.read_text(encoding="utf-8"))[:NUM_ALPACA_RECORDS]
    text = json.dumps(records, indent=2, separators=(",", ":"), ensure_ascii=True)
    target.write_text(text.replace("/", "\\/"), encoding="utf-8")


def write_arena_slice(source: Path, target: Path) -> None:
    """The first questions and, for two models, their answer lines, copied byte for byte."""
    (target / "model_answer").mkdir(parents=True, exist_ok=True)
    questions = source.joinpath("question.jsonl").read_bytes().splitlines(keepends=True)
    head = questions[:NUM_ARENA_QUESTIONS]
    (target / "question.jsonl").write_bytes(b"".join(head))
    uids = {json.loads(line)["uid"] for line in head}
    for model in ARENA_MODELS:
        name = f"model_answer/{model}.jsonl"
        lines = source.joinpath(name).read_bytes().splitlines(keepends=True)
        keep = [line for line in lines if json.loads(line)["uid"] in uids]
        (target / name).write_bytes(b"".join(keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with alpaca_eval/ and arena_hard_v0.1/")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--examples", action="store_true", help=f"also write {EXAMPLES}")
    args = parser.parse_args()
    samples = grouped_by_prompt(load_all(args.data))
    summary(samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_samples(samples, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    if args.examples:
        (EXAMPLES / "alpaca_eval").mkdir(parents=True, exist_ok=True)
        for name in ALPACA_SLICES:
            write_alpaca_slice(args.data / "alpaca_eval" / name, EXAMPLES / "alpaca_eval" / name)
        write_arena_slice(args.data / "arena_hard_v0.1", EXAMPLES / "arena_hard_v0.1")
        print(f"wrote slices under {EXAMPLES}")


if __name__ == "__main__":
    main()
