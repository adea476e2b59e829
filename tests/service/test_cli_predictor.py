"""`kvsched predictor train | eval` end to end, and the shipped default model (issue 3).

Trains on the tiny example slices (seconds), evaluates with --json / --plot, and checks that bad
model files, bad data and a missing tokenizer end with exit 2 and one `kvsched: error:` line.
The default model's header must name exactly the documented train split of the shipped corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import predictors.datasets
from predictors.base import PromptBatch
from predictors.datasets import load_samples
from predictors.default import DEFAULT_MODEL_PATH, load_predictor, split_train_test
from predictors.model import LengthModel, ModelFileError, training_data_sha256
from predictors.model_file import read_model_file
from predictors.tokenizer import TokenizerUnavailableError
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "text" / "lengths.jsonl.gz"
ALPACA = ROOT / "data" / "text" / "examples" / "alpaca_eval"
ARENA = ROOT / "data" / "text" / "examples" / "arena_hard_v0.1"
TINY_BUDGETS = ("--d-lo", "0.2", "--d-hi", "0.2")  # 70 rows: too few calibration rows for 5%
JSON_KEYS = (
    "n coverage miss_below_lo miss_above_hi mean_width median_width median_alpha "
    "kendall_tau_lo kendall_tau_hi winkler survivors"
).split()


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["predictor", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvsched: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.kvp"
    args: list[str | Path] = [
        "train",
        "--data",
        ALPACA,
        "--data",
        ARENA,
        "--out",
        path,
        *TINY_BUDGETS,
    ]
    assert main(["predictor", *map(str, args)]) == 0
    return path


def test_train_writes_a_loadable_model(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    model = LengthModel.load(tiny_model)
    assert model.kind == "quantile" and (model.d_lo, model.d_hi) == (0.2, 0.2)
    assert model.info.num_train + model.info.num_cal == 70  # 40 AlpacaEval + 30 Arena-Hard rows


def test_train_prints_summary_and_held_out_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "h.kvp"
    args: list[str | Path] = [
        "train",
        "--data",
        ALPACA,
        "--data",
        ARENA,
        "--out",
        out_path,
        *TINY_BUDGETS,
    ]
    code, out, err = run(capsys, *args, "--kind", "histogram", "--test-fraction", "0.3")
    assert code == 0, err
    assert "70 rows, 35 prompts, 4 models" in out
    assert "offsets (log1p) lo" in out and "trained in" in out
    assert "held-out evaluation" in out and "coverage" in out
    model = LengthModel.load(out_path)
    assert model.kind == "histogram" and model.info.num_train + model.info.num_cal < 70


def test_eval_json_and_plot(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path, plot_path = tmp_path / "eval.json", tmp_path / "eval.png"
    args: list[str | Path] = ["eval", "--model", tiny_model, "--data", ARENA, "--json", report_path]
    code, out, err = run(capsys, *args, "--plot", plot_path)
    assert code == 0, err
    assert "miss_below_lo" in out and "kendall tau" in out and "winkler" in out
    report = json.loads(report_path.read_text())
    assert all(key in report for key in JSON_KEYS)
    assert report["n"] == 30 and 0.0 <= report["coverage"] <= 1.0
    total = report["coverage"] + report["miss_below_lo"] + report["miss_above_hi"]
    assert total == pytest.approx(1.0)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eval", "--model", "default", "--data", ARENA)
    assert code == 0, err
    assert "model default" in out and "30 rows, 15 prompts" in out and "coverage" in out


def test_bad_model_files_exit_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage, truncated = tmp_path / "garbage.kvp", tmp_path / "truncated.kvp"
    garbage.write_text("not a model\n")
    truncated.write_bytes(tiny_model.read_bytes()[:500])
    for path in (garbage, truncated, tmp_path / "missing.kvp"):
        code, _, err = run(capsys, "eval", "--model", path, "--data", ARENA)
        assert_one_line_error(code, err, str(path))


def test_bad_data_exits_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.jsonl"
    code, _, err = run(capsys, "eval", "--model", tiny_model, "--data", missing)
    assert_one_line_error(code, err, str(missing), "no such file")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi", "output_tokens": "many"}\n')
    code, _, err = run(capsys, "train", "--data", broken, "--out", tmp_path / "x.kvp")
    assert_one_line_error(code, err, str(broken), "output_tokens")
    assert not (tmp_path / "x.kvp").exists()
    code, _, err = run(capsys, "train", "--data", ALPACA, "--out", tmp_path / "x.kvp")
    assert_one_line_error(code, err, "calibration rows are too few")  # 40 rows at 5% + 5%


def test_missing_tokenizer_exits_2(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(texts: object) -> None:
        raise TokenizerUnavailableError("token counting needs tiktoken: pip install")

    monkeypatch.setattr(predictors.datasets, "count_tokens", unavailable)
    code, _, err = run(capsys, "eval", "--model", tiny_model, "--data", ALPACA)
    assert_one_line_error(code, err, str(ALPACA), "token counting needs tiktoken")


def test_bad_options_exit_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "eval", "--model", tiny_model, "--data", ARENA, "--max-tokens", "0")
    assert_one_line_error(code, err, "--max-tokens")
    args: list[str | Path] = [
        "train",
        "--data",
        ARENA,
        "--out",
        tmp_path / "x.kvp",
        "--test-fraction",
        "1.5",
    ]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "test fraction")
    assert not (tmp_path / "x.kvp").exists()


def test_load_predictor_default_keeps_intervals_in_bounds() -> None:
    model = load_predictor("default")
    prompts = (
        "Write a haiku about autumn.",
        "Explain, in detail, how a transformer language model is trained. " * 20,
        "Translate 'good morning' into French.",
        "Write a Python function that sorts a list, with tests and docs.",
    )
    caps = np.array([4096, 4096, 1, 50], dtype=np.int64)
    batch = PromptBatch(
        prompts, np.array([8, 260, 9, 14]), ("gpt4_1106_preview", "", "unknown", ""), caps
    )
    lo, hi = model.predict(batch)
    assert lo.dtype == hi.dtype == np.int64
    assert np.all((1 <= lo) & (lo <= hi) & (hi <= caps))
    assert lo[1] < hi[1]  # an uncapped long prompt gets a real interval, not a point
    with pytest.raises(ModelFileError, match="no such model file"):
        load_predictor("not-default.kvp")


def test_default_model_was_trained_on_the_documented_split() -> None:
    header, _ = read_model_file(DEFAULT_MODEL_PATH)
    train, test = split_train_test(load_samples(CORPUS))
    assert (header["kind"], header["d_lo"], header["d_hi"]) == ("quantile", 0.05, 0.05)
    training = header["training"]
    assert training["num_train"] + training["num_cal"] == len(train)
    assert training["data_sha256"] == training_data_sha256(train)
    assert not set(train.prompt_ids) & set(test.prompt_ids)
    assert len(set(test.prompt_ids)) == round(0.2 * 1305) and len(train) + len(test) == 25_647
