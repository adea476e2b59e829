"""`kvsched profile` end to end: engine -> .toml profile -> load_cost_model -> simulate.

The sim engine emulates a known cost model, so its profile must give that model back; the hf
engine runs a tiny random Llama built in the test (no downloads). Bad input exits 2 with one
`kvsched: error: ...` line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main
from simulator.cost_model import PRESETS, load_cost_model
from simulator.profiler import read_samples

AZURE = Path(__file__).resolve().parents[2] / "data" / "examples" / "azure_conv_head.csv"
FAST = ["--decode-steps", "2", "--repeats", "3", "--warmup", "1", "--no-progress"]


def profile(*args: str | Path) -> int:
    return main(["profile", *map(str, args)])


def simulate_with(cost_model: str, out: Path, *extra: str) -> dict[str, object]:
    argv = ["simulate", "--trace", str(AZURE), "--backlog", "--policies", "vllm,fcfs"]
    code = main([*argv, "--cost-model", cost_model, *extra, "--json", str(out), "--no-progress"])
    assert code == 0
    document: dict[str, object] = json.loads(out.read_text())
    return document


def test_sim_engine_profile_recovers_its_cost_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h100.toml"
    assert profile("--engine", "sim", "--out", out, "--grid", "1,8x32,256", *FAST) == 0
    stdout = capsys.readouterr().out
    assert f"{out}: 12 iterations" in stdout and "R^2=" in stdout
    truth, model = PRESETS["llama3-8b-h100"], load_cost_model(str(out))
    assert model.name == "h100" and model.kv_capacity_tokens == truth.kv_capacity_tokens
    # wall time can only add to the modelled time (sleep overshoot), so allow slack upwards
    assert truth.base_ms * 0.97 < model.base_ms < truth.base_ms * 1.25
    assert 0.9 < model.prefill_ms_per_token / truth.prefill_ms_per_token < 1.25
    samples = read_samples(out)
    assert [s.phase for s in samples[:3]] == ["prefill", "decode", "decode"]
    assert {(s.batch_size, s.seq_tokens) for s in samples if s.phase == "prefill"} == {
        (1, 32), (1, 256), (8, 32), (8, 256),
    }  # fmt: skip
    assert all(s.tp == 1 for s in samples)
    ours = simulate_with(str(out), tmp_path / "ours.json")
    preset = simulate_with("llama3-8b-h100", tmp_path / "preset.json")
    for policy in ("vllm", "fcfs"):
        got = ours["results"][policy]["mean_e2e_s"]  # type: ignore[index]
        want = preset["results"][policy]["mean_e2e_s"]  # type: ignore[index]
        assert got == pytest.approx(want, rel=0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "sim", "--out", "p.txt"], "the profile is written as .toml or .json"),
        (["--engine", "sim", "--out", "p.toml", "--grid", "1,2"], "expected BATCH_SIZES x SEQ"),
        (["--engine", "hf", "--out", "p.toml"], "--engine hf needs --model"),
        (["--engine", "hf", "--model", "nowhere", "--out", "p.toml"], "not a local directory"),
        (["--engine", "sim", "--out", "p.toml", "--speedup", "0"], "--speedup must be > 0"),
        (
            ["--engine", "sim", "--out", "p.toml", "--kv-tokens", "100", "--grid", "2x64"],
            "grid cell 2x64: 138 KV tokens exceed the engine's capacity 100",
        ),
        (["--engine", "sim", "--out", "p.toml", "--repeats", "0"], "repeats must be an integer"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert profile(*args, "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "p.toml").exists()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.service.tiny_llama import build_model

    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP threads spin against each other on a shared CPU
    yield path
    torch.set_num_threads(threads)


class TestHF:
    """The hf engine on a tiny random Llama (skipped only where torch is not installed)."""

    def test_profile_then_simulate(self, model_path: Path, tmp_path: Path) -> None:
        out = tmp_path / "tiny.toml"
        grid = ["--grid", "1,2,4x8,48", "--kv-tokens", "4000"]
        assert profile("--engine", "hf", "--model", model_path, "--out", out, *grid, *FAST) == 0
        model = load_cost_model(str(out))
        assert model.kv_capacity_tokens == 4000 and str(model_path) in model.description
        samples = read_samples(out)
        assert len(samples) == 6 * 3 and all(s.measured_ms > 0 for s in samples)
        # batched or not, four decoding rows cost more than one: the fit found a per-request or
        # per-KV-token cost (coefficients are >= 0, so only a zero fit would make them equal)
        wide, narrow = model.iteration_time_s(0, 4, 4 * 50), model.iteration_time_s(0, 1, 50)
        assert wide > narrow
        document = simulate_with(str(out), tmp_path / "sim.json")
        assert document["cost_model"]["name"] == "tiny"  # type: ignore[index]
        assert document["results"]["vllm"]["completed"] == 20  # type: ignore[index]

    def test_grid_longer_than_the_model_is_refused(
        self, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "tiny.toml"
        args: list[str | Path] = ["--model", model_path, "--out", out, "--grid", "1x126"]
        assert profile("--engine", "hf", *args, "--no-progress") == 2
        err = capsys.readouterr().err
        assert "131 tokens per request exceed the engine's max_model_len 128" in err
