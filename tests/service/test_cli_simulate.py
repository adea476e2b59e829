"""`kvsched simulate` and `kvsched policies` end to end (issue #2; reference cases).

Calls `service.cli.main` in-process (fast, output via capsys) and runs the installed console
script once. Invariant checked throughout: bad input exits 2 with exactly one line
`kvsched: error: ...` on stderr and no traceback.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from algorithms import REGISTRY
from service.cli import main
from tests.factories import CASE_1, CASE_2, CASE_3, write_canonical_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "examples"
AZURE = EXAMPLES / "azure_conv_head.csv"  # 20 requests with real arrival times
ALL_POLICIES = ",".join(REGISTRY)
SUMMARY_KEYS = (
    "completed rejected total_latency_s mean_e2e_s p50_e2e_s p90_e2e_s p99_e2e_s mean_ttft_s "
    "p99_ttft_s mean_tpot_s throughput_rps throughput_tok_s evictions peak_kv_tokens "
    "mean_kv_utilization makespan_s sim_wall_s"
).split()


@dataclass(frozen=True, slots=True)
class Cli:
    """`kvsched simulate` in-process, writing its files under `tmp_path`."""

    tmp_path: Path
    capsys: pytest.CaptureFixture[str]

    def simulate(self, *args: str | Path) -> tuple[int, str, str]:
        """Run `kvsched simulate ARGS --no-progress`; return (exit status, stdout, stderr)."""
        code = main(["simulate", *map(str, args), "--no-progress"])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str | Path) -> dict[str, Any]:
        """Run a simulation that must succeed and return its `--json` document."""
        out_path = self.tmp_path / "out.json"
        code, _, err = self.simulate(*args, "--json", out_path)
        assert code == 0, err
        document: dict[str, Any] = json.loads(out_path.read_text())
        return document

    def jsonl(self, name: str, records: list[dict[str, Any]]) -> Path:
        (path := self.tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    def case(self, case: dict[str, Any]) -> Path:
        prompts, outputs, interval = case["prompts"], case["outputs"], case.get("interval")
        path = self.tmp_path / "case.jsonl"
        return write_canonical_trace(path, prompts=prompts, outputs=outputs, interval=interval)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def record(prompt: int, output: int, lo: int, hi: int, arrival_s: float = 0.0) -> dict[str, Any]:
    keys = ("arrival_s", "prompt_tokens", "output_tokens", "lo", "hi")
    return dict(zip(keys, (arrival_s, prompt, output, lo, hi), strict=True))


def unit_args(trace: Path, kv_tokens: int, policies: str, intervals: str = "given") -> list[str]:
    """The papers' setting: backlog at t=0, one time unit per iteration, the trace's lo/hi,
    evicted requests restart from scratch."""
    options = (
        f"--backlog --cost-model unit --kv-tokens {kv_tokens} --intervals {intervals} "
        "--preemption restart"
    )
    return ["--trace", str(trace), *options.split(), "--policies", policies]


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    """`result` is (exit status, stdout, stderr) of a run that must fail cleanly."""
    code, out, err = result
    assert (code, out) == (2, "")
    assert len(lines := err.strip().splitlines()) == 1, err
    assert lines[0].startswith("kvsched: error: ") and "Traceback" not in err
    assert all(f in lines[0] for f in fragments), (lines[0], fragments)


@pytest.mark.parametrize(
    ("case", "expected"),  # policy -> (total latency, evictions)
    [
        (CASE_1, {"mcsf": (14, 0), "fcfs": (16, 0)}),
        (CASE_2, {"sorted-f": (23, 0), "mcsf": (25, 0), "fcfs": (25, 0)}),
        (CASE_3, {"amin": (52, 2), "amax": (103, 0), "hsf": (49, 0)}),
    ],
    ids=["case1", "case2", "case3"],
)
def test_reference_cases(cli: Cli, case: dict[str, Any], expected: dict[str, Any]) -> None:
    args = unit_args(cli.case(case), case["capacity"], ",".join(expected))
    results = cli.json(*args)["results"]
    assert {p: (r["total_latency_s"], r["evictions"]) for p, r in results.items()} == expected
    assert all(r["completed"] == len(case["prompts"]) for r in results.values())


@pytest.mark.parametrize("intervals", ["exact", "global", "bins", "alpha=0.3"])
def test_hsf_plans_with_true_lengths_whatever_the_intervals(cli: Cli, intervals: str) -> None:
    """hsf is clairvoyant: the simulator gives it the true lengths, so intervals don't matter."""
    args = unit_args(cli.case(CASE_3), 16, "hsf", intervals=intervals)
    assert cli.json(*args)["results"]["hsf"]["total_latency_s"] == 49


@pytest.mark.parametrize(
    ("case", "param", "key", "expected"),
    [  # reference case 1: FCFS skipping a request that does not fit matches shortest-first
        (CASE_1, "fcfs.skip_on_failure=true", "total_latency_s", 14),
        (CASE_3, "amin.bound_after_eviction=g+1", "completed", 8),
    ],
)
def test_param_reaches_the_batch_former(
    cli: Cli, case: dict[str, Any], param: str, key: str, expected: int
) -> None:
    policy = param.partition(".")[0]
    document = cli.json(*unit_args(cli.case(case), case["capacity"], policy), "--param", param)
    assert document["results"][policy][key] == expected


def test_json_document_has_the_issue_2_keys_and_consistent_values(cli: Cli) -> None:
    args = f"--rate-scale 4 --kv-tokens 2500 --policies {ALL_POLICIES}".split()
    document = cli.json("--trace", AZURE, *args)
    expected = {"trace", "requests", "cost_model", "kv_capacity_tokens", "intervals", "seed"}
    assert expected | {"results"} <= document.keys()
    assert (document["trace"], document["requests"], document["seed"]) == (str(AZURE), 20, 0)
    assert document["kv_capacity_tokens"] == document["cost_model"]["kv_capacity_tokens"] == 2500
    assert (document["cost_model"]["name"], document["intervals"]) == ("llama3-8b-h100", "exact")
    assert list(document["results"]) == list(REGISTRY)
    for policy, summary in document["results"].items():
        assert set(SUMMARY_KEYS) <= summary.keys(), policy
        check_summary(summary, requests=20, kv_capacity_tokens=2500)
    assert document["results"]["vllm"]["evictions"] > 0  # memory is tight enough to matter


def check_summary(summary: dict[str, Any], *, requests: int, kv_capacity_tokens: int) -> None:
    assert summary["completed"] + summary["rejected"] == requests
    assert 0 < summary["peak_kv_tokens"] <= kv_capacity_tokens
    assert summary["p50_e2e_s"] <= summary["p90_e2e_s"] <= summary["p99_e2e_s"]
    assert 0 < summary["mean_ttft_s"] <= summary["mean_e2e_s"] and 0 < summary["mean_tpot_s"]
    assert summary["p99_ttft_s"] <= summary["p99_e2e_s"]
    assert 0 < summary["mean_kv_utilization"] <= 1
    assert summary["makespan_s"] > 0 and summary["sim_wall_s"] >= 0
    mean_total = summary["mean_e2e_s"] * summary["completed"]
    assert math.isclose(summary["total_latency_s"], mean_total, rel_tol=1e-9)
    rps = summary["completed"] / summary["makespan_s"]
    assert math.isclose(summary["throughput_rps"], rps, rel_tol=1e-9)
    assert summary["throughput_tok_s"] > summary["throughput_rps"] and summary["evictions"] >= 0


def test_stdout_has_a_table_with_one_row_per_policy(cli: Cli) -> None:
    code, out, err = cli.simulate(*unit_args(cli.case(CASE_3), 16, "amin,amax,hsf"))
    assert code == 0, err
    lines = out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["policy"])
    assert set(lines[header + 1]) == {"-"}

    def cell(row: str, label: str) -> str:  # numeric columns are right-aligned under labels
        return row[: lines[header].index(label) + len(label)].split()[-1]

    rows = [(row.split()[0], cell(row, "done"), cell(row, "evict")) for row in lines[header + 2 :]]
    assert rows == [("amin", "8", "2"), ("amax", "8", "0"), ("hsf", "8", "0")]
    assert "8 requests" in lines[0] and "M = 16" in lines[0]


def test_plot_writes_a_png(cli: Cli) -> None:
    plot = cli.tmp_path / "latency.png"
    args = "--rate-scale 1 --cost-model llama3-8b-h100 --policies fcfs,mcsf".split()
    code, _, err = cli.simulate("--trace", AZURE, *args, "--plot", plot)
    assert code == 0, err
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_limit_keeps_the_first_n_requests(cli: Cli) -> None:
    document = cli.json("--trace", AZURE, "--limit", "5", "--policies", "fcfs")
    assert (document["requests"], document["results"]["fcfs"]["completed"]) == (5, 5)


def seeded_results(cli: Cli, seed: int, arrivals: str) -> dict[str, Any]:
    args = f"{arrivals} --intervals alpha=0.5,miss=0.2 --kv-tokens 2500 --policies vllm,mcsf,amin"
    document = cli.json("--trace", AZURE, *args.split(), "--seed", str(seed))
    assert document["seed"] == seed
    wall = "sim_wall_s"  # the only field that depends on the machine
    return {p: {k: v for k, v in r.items() if k != wall} for p, r in document["results"].items()}


@pytest.mark.parametrize("arrivals", ["--rate 5", "--backlog"])  # seeded arrivals, or not
def test_same_seed_gives_the_same_results(cli: Cli, arrivals: str) -> None:
    first, again, other = (seeded_results(cli, seed, arrivals) for seed in (7, 7, 8))
    assert first == again
    assert first != other  # the seed drives the intervals (and the Poisson arrivals)


def test_request_that_can_never_fit_is_rejected_not_dropped(cli: Cli) -> None:
    # request 2 needs 30 + 3 > M = 20 tokens even alone in an empty cache
    trace = cli.jsonl("huge.jsonl", [record(30 if i == 2 else 2, 3, 3, 3, i) for i in range(6)])
    args = f"--cost-model unit --kv-tokens 20 --intervals given --policies {ALL_POLICIES}"
    document = cli.json("--trace", trace, *args.split())
    assert document["requests"] == 6
    for policy, summary in document["results"].items():
        assert (summary["completed"], summary["rejected"]) == (5, 1), policy


@pytest.mark.parametrize(
    "records",
    [
        [(0.0, 2, 1, 10), (0.0, 1, 1, 6), (0.0, 10, 1, 9), (1.0, 1, 1, 10), (1.0, 1, 1, 1)],
        [(0.0, 2, 1, 10), (0.0, 10, 1, 9), (0.0, 1, 1, 10), (0.0, 1, 1, 1)],
    ],
)
def test_prediction_misses_still_finish_every_request(
    cli: Cli, records: list[tuple[float, int, int, int]]
) -> None:
    """Outputs longer than `hi` force evictions (docs/algorithms.md); every policy must finish."""
    trace = cli.jsonl("miss.jsonl", [record(1, o, lo, hi, a) for a, o, lo, hi in records])
    args = f"--cost-model unit --kv-tokens 12 --intervals given --policies {ALL_POLICIES}"
    document = cli.json("--trace", trace, *args.split())
    for policy, summary in document["results"].items():
        assert summary["completed"] == len(records), policy
        assert summary["peak_kv_tokens"] <= 12, policy


def test_malformed_trace_names_the_file_line_and_field(cli: Cli) -> None:
    trace = cli.jsonl("bad.jsonl", [record(3, -4 if i == 2 else 2, 2, 2) for i in range(4)])
    assert_one_line_error(cli.simulate("--trace", trace), f"{trace}:3:", "'output_tokens'", "-4")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--trace", "missing.jsonl"], ["missing.jsonl"]),  # the last --trace wins
        (["--policies", "fcfs,nope"], ["unknown policy", "nope", "mcsf"]),
        (["--policies", ","], ["unknown policy"]),
        (["--intervals", "bogus"], ["interval spec 'bogus'"]),
        (["--intervals", "alpha=2"], ["alpha"]),
        (["--intervals", "given"], ["lo/hi"]),  # the trace has no lo/hi columns
        (["--param", "amin"], ["--param 'amin'", "POLICY.KEY=VALUE"]),
        (["--param", "amin=3"], ["POLICY.KEY=VALUE"]),
        (["--param", "amin.=3"], ["POLICY.KEY=VALUE"]),
        (["--policies", "fcfs", "--param", "amin.bound_after_eviction=g"], ["not in --policies"]),
        (["--policies", "amin", "--param", "amin.nope=1"], ["amin", "nope"]),
        (["--policies", "amin", "--param", "amin.bound_after_eviction=g+2"], ["g+1"]),
        (["--cost-model", "nope"], ["unknown cost model", "unit"]),
        (["--kv-tokens", "0"], ["kv_capacity_tokens"]),
        (["--limit", "0"], ["limit"]),
        (["--rate", "-1"], ["rate"]),
    ],
)
def test_bad_options_exit_2_with_one_line(cli: Cli, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(cli.simulate("--trace", EXAMPLES / "conv_head.jsonl", *args), *fragments)


def test_two_arrival_options_are_refused_by_argparse(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--trace", str(AZURE), "--rate", "1", "--backlog"])
    assert exit_info.value.code == 2
    assert "not allowed with" in cli.capsys.readouterr().err


def test_lengths_only_trace_needs_an_arrival_mode(cli: Cli) -> None:
    trace = EXAMPLES / "vidur_conv_head_lengths_only.csv"
    assert_one_line_error(cli.simulate("--trace", trace), "lengths-only", "--backlog")
    code, _, err = cli.simulate("--trace", trace, "--backlog", "--policies", "fcfs")
    assert code == 0, err


def test_policies_lists_every_registered_batch_former(cli: Cli) -> None:
    assert main(["policies"]) == 0
    lines = cli.capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if line[:1].strip()] == list(REGISTRY)


def run_console_script(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `kvsched` entry point (or `python -m service.cli` if none is on disk)."""
    script = Path(sys.executable).parent / "kvsched"
    found = str(script) if script.exists() else shutil.which("kvsched")
    command = [found] if found else [sys.executable, "-m", "service.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_installed_console_script_runs_end_to_end(cli: Cli) -> None:
    out_path = cli.tmp_path / "out.json"
    args = unit_args(cli.case(CASE_1), 12, "mcsf,fcfs")
    completed = run_console_script("simulate", *args, "--json", str(out_path))
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == "" and "mcsf" in completed.stdout
    results = json.loads(out_path.read_text())["results"]
    assert {p: r["total_latency_s"] for p, r in results.items()} == {"mcsf": 14, "fcfs": 16}
    bad = run_console_script("simulate", "--trace", str(cli.tmp_path / "nope.jsonl"), "--backlog")
    assert_one_line_error((bad.returncode, bad.stdout, bad.stderr), "nope.jsonl")
