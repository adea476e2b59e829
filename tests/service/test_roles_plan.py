"""`kvsched serve --plan`: a plan written by `kvsched plan` becomes worker roles, counts and batch
limits (flags win), is served by a real pool, and a bad or foreign plan file fails in one line.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from service.cli import build_parser, main
from service.commands.serve import build_settings
from service.pool.pool import WorkerPool
from service.protocol import GenerationRequest
from service.settings import Settings

TRACE = Path(__file__).resolve().parents[2] / "data" / "traces" / "azure_code_2023.csv"


def from_plan(path: Path, **extra: Any) -> Settings:
    fields: dict[str, Any] = {"plan": path, **extra}
    return Settings(**fields)


def write_plan(path: Path, target_s: float) -> dict[str, Any]:
    argv = ["plan", "--trace", str(TRACE), "--profile", "llama3-8b-h100", "--gpus", "3"]
    argv += ["--latency-target-s", str(target_s), "--samples", "200", "--no-baselines"]
    assert main([*argv, "--no-progress", "--json", str(path)]) == 0
    plan: dict[str, Any] = json.loads(path.read_text())
    return plan


@pytest.fixture(scope="module")
def waa_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("plans") / "waa.json"
    plan = write_plan(path, 3.0)  # code trace, tight target: the planner picks WAA here
    assert plan["policy"] == "waa", plan["label"]
    return path, plan


def test_a_waa_plan_sets_roles_counts_and_per_worker_limits(
    waa_plan: tuple[Path, dict[str, Any]],
) -> None:
    path, plan = waa_plan
    prefill, decode = plan["serve"]["workers"]
    settings = from_plan(path)
    num_prefill = prefill["count"] * prefill["devices"]
    assert settings.workers == num_prefill + decode["count"] * decode["devices"]
    assert settings.prefill_workers == num_prefill >= 1
    assert settings.max_batch_size == math.ceil(decode["max_batch_size"] / decode["devices"])
    assert settings.prefill_max_batch_size == math.ceil(
        prefill["max_batch_size"] / prefill["devices"]
    )
    tokens = math.ceil(prefill["max_num_batched_tokens"] / prefill["devices"])
    assert settings.prefill_max_num_batched_tokens == tokens
    assert settings.cost_model == plan["cost_model"] == "llama3-8b-h100"
    assert settings.kv_transfer_ms_per_token == plan["cluster"]["kv_transfer_ms_per_token"]


def test_flags_given_win_over_the_plan(waa_plan: tuple[Path, dict[str, Any]]) -> None:
    path, plan = waa_plan
    argv = ["serve", "--plan", str(path), "--max-batch-size", "7", "--prefill-workers", "1"]
    settings = build_settings(build_parser().parse_args([*argv, "--cost-model", "unit"]))
    assert (settings.max_batch_size, settings.prefill_workers, settings.cost_model) == (
        7,
        1,
        "unit",
    )
    assert settings.workers == from_plan(path).workers  # not given: from the plan


def test_an_rra_plan_runs_mixed_workers(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "rra.json", 20.0)
    assert plan["policy"] == "rra", plan["label"]
    (mixed,) = plan["serve"]["workers"]
    settings = from_plan(tmp_path / "rra.json")
    assert settings.prefill_workers == 0
    assert settings.workers == mixed["count"] * mixed["devices"]


def test_a_waa_plan_is_served_by_prefill_and_decode_workers(
    waa_plan: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = waa_plan
    settings = from_plan(path, predictor="none", policy="vllm", speedup=200.0)
    pool = WorkerPool(settings)
    reqs = [
        GenerationRequest(
            f"p{i}", tuple(range(3, 300)), max_tokens=12, lo=1, hi=12, ignore_eos=True
        )
        for i in range(8)
    ]

    async def scenario() -> dict[str, Any]:
        await asyncio.wait_for(pool.start(), 30)
        try:
            for req in reqs:  # one by one, so each decode worker gets some
                events = [e async for e in pool.generate(req)]
                assert events[-1].finish_reason == "length"
                assert sum(len(e.token_ids) for e in events) == 12
            return pool.describe()
        finally:
            await asyncio.wait_for(pool.stop(1.0), 30)

    view = asyncio.run(scenario())
    roles = [worker["role"] for worker in view["workers"]]
    num_prefill = settings.prefill_workers
    assert roles == ["prefill"] * num_prefill + ["decode"] * (settings.workers - num_prefill)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"serve": ', "not JSON (line 1"),
        ("[1, 2]", "not a plan"),
        ('{"policy": "waa"}', 'no "serve" section'),
        (
            '{"serve": {"workers": [{"role": "prefill", "count": 1, "devices": 1, '
            '"max_batch_size": 4}]}}',
            "roles ['prefill']",
        ),  # fmt: skip
        (
            '{"serve": {"workers": [{"role": "mixed", "count": 0, "devices": 1, '
            '"max_batch_size": 4}]}}',
            "serve.workers[0]: count must be an integer >= 1",
        ),  # fmt: skip
        ('{"serve": {"workers": [{"role": "mixed", "count": 1}]}}', "missing devices"),
        (
            '{"serve": {"cost_model": "my-gpu", "workers": [{"role": "mixed", "count": 1, '
            '"devices": 1, "max_batch_size": 4}]}}',
            "cost model 'my-gpu' is neither",
        ),  # fmt: skip
    ],
)
def test_bad_plan_files_fail_in_one_line_naming_the_file(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(content)
    assert main(["serve", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvsched: error: ")
    assert f"plan {path}: " in err and message in err


def test_a_missing_plan_file_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--plan", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read it (No such file or directory)" in err


def test_roles_need_the_sim_or_hf_engine_and_a_decode_worker(
    waa_plan: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = waa_plan
    assert main(["serve", "--plan", str(path), "--engine", "vllm", "--model", "/nowhere"]) == 2
    assert "worker roles need --engine sim or hf, not 'vllm'" in capsys.readouterr().err
    assert main(["serve", "--workers", "2", "--prefill-workers", "2"]) == 2
    assert "--prefill-workers 2 leaves no decode worker" in capsys.readouterr().err
