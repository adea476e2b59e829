"""`kvsched predictor eval --online` (issue 13): the replay the server would see, its JSON keys,
every --data layout, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictors.datasets import load_samples
from predictors.default import split_train_test
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "text" / "lengths.jsonl.gz"
ALPACA = ROOT / "data" / "text" / "examples" / "alpaca_eval"
ARENA = ROOT / "data" / "text" / "examples" / "arena_hard_v0.1"
KEYS = "n coverage miss_below_lo miss_above_hi median_alpha kendall_tau_lo kendall_tau_hi".split()


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["predictor", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 rows of the default model's held-out split (shuffled), true lengths x3."""
    _, test = split_train_test(load_samples(CORPUS))
    order = np.random.default_rng(1).permutation(len(test))[:1500]
    path = tmp_path_factory.mktemp("data") / "shifted.jsonl"
    with path.open("w") as out:
        for i in order.tolist():
            row = {
                "prompt": test.prompts[i],
                "prompt_id": test.prompt_ids[i],
                "model": test.models[i],
                "source": test.sources[i],
                "prompt_tokens": int(test.prompt_tokens[i]),
                "output_tokens": int(test.output_tokens[i]) * 3,
            }
            out.write(json.dumps(row) + "\n")
    return path


def test_online_eval_recovers_coverage_that_offline_eval_misses(
    capsys: pytest.CaptureFixture[str], shifted: Path, tmp_path: Path
) -> None:
    offline, online = tmp_path / "offline.json", tmp_path / "online.json"
    assert run(capsys, "eval", "--model", "default", "--data", shifted, "--json", offline)[0] == 0
    args = ("eval", "--model", "default", "--data", shifted, "--online", "--json", online)
    code, out, _ = run(capsys, *args, "--plot", tmp_path / "online.png")
    assert code == 0 and "after the first 200" in out
    before, after = json.loads(offline.read_text()), json.loads(online.read_text())
    for document in (before, after):
        assert all(key in document for key in KEYS)
        assert document["n"] == 1500
    assert (before["mode"], after["mode"]) == ("offline", "online")
    assert before["coverage"] < 0.75  # lengths 3x what the model learned
    stream = after["after_warmup"]
    assert 0.85 <= stream["coverage"] <= 0.95
    assert 0.025 <= stream["miss_below_lo"] <= 0.075
    assert 0.025 <= stream["miss_above_hi"] <= 0.075
    assert after["coverage"] > before["coverage"] + 0.1
    assert (tmp_path / "online.png").stat().st_size > 10_000


@pytest.mark.parametrize("data", [ALPACA, ARENA])
def test_online_eval_reads_every_layout(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    assert (
        run(capsys, "eval", "--model", "default", "--data", data, "--online", "--json", out)[0] == 0
    )
    document = json.loads(out.read_text())
    assert all(key in document for key in KEYS) and document["n"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--online", "--online-step", "0"), "--online-step must be in (0, 1]"),
        (("--online-step", "0.1"), "--online-step needs --online"),
        (("--online", "--max-tokens", "0"), "--max-tokens must be >= 1"),
    ],
)
def test_bad_online_arguments_end_with_one_line(
    capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, "eval", "--model", "default", "--data", ARENA, *extra)
    assert code == 2
    assert err.strip().startswith("kvsched: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_online_eval_of_missing_data_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.jsonl"
    code, _, err = run(capsys, "eval", "--model", "default", "--data", missing, "--online")
    assert code == 2 and "nope.jsonl" in err and len(err.strip().splitlines()) == 1
