"""Trace loading (four formats, detection, one-line errors) and arrival control."""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from predictors.jsonl import FormatError
from simulator.arrivals import with_arrivals
from simulator.traces import FORMATS, Trace, detect_format, load_trace

DATA = Path(__file__).resolve().parents[2] / "data"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def make_trace(arrival_s: list[float], **kwargs: object) -> Trace:
    n = len(arrival_s)
    defaults: dict[str, object] = {
        "prompt_tokens": np.arange(1, n + 1, dtype=np.int64),
        "output_tokens": np.full(n, 5, dtype=np.int64),
        "source": "mem",
        "format": "jsonl",
    }
    defaults.update(kwargs)
    return Trace(np.asarray(arrival_s, dtype=np.float64), **defaults)  # type: ignore[arg-type]


# --- formats --------------------------------------------------------------------------------


def test_azure_csv_gives_seconds_since_first_request_at_100ns_precision(tmp_path: Path) -> None:
    text = AZURE_HEADER + (
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951691,396,109\n"
        "2023-11-16 18:16:46,879,55\n"
    )
    trace = load_trace(write(tmp_path, "a.csv", text))
    assert trace.format == "azure" and trace.has_arrivals and len(trace) == 3
    np.testing.assert_allclose(trace.arrival_s, [0.0, 4.3145791, 59.31941], rtol=0, atol=1e-9)
    assert trace.prompt_tokens.tolist() == [374, 396, 879]
    assert trace.output_tokens.tolist() == [44, 109, 55]
    assert trace.prompt_tokens.dtype == np.int64 and trace.arrival_s.dtype == np.float64


def test_unsorted_rows_are_sorted_stably_by_arrival(tmp_path: Path) -> None:
    text = AZURE_HEADER + (
        "2023-11-16 18:00:05,1,1\n2023-11-16 18:00:01,2,1\n"
        "2023-11-16 18:00:05,3,1\n2023-11-16 18:00:01,4,1\n"
    )
    trace = load_trace(write(tmp_path, "a.csv", text))
    assert trace.prompt_tokens.tolist() == [2, 4, 1, 3]  # ties keep file order
    assert trace.arrival_s.tolist() == [0.0, 0.0, 4.0, 4.0]


def test_azure_timestamps_with_time_zone_are_converted_to_utc(tmp_path: Path) -> None:
    text = AZURE_HEADER + "2024-05-10 00:00:00+00:00,1,1\n2024-05-10 02:00:01.5+02:00,1,1\n"
    assert load_trace(write(tmp_path, "a.csv", text)).arrival_s.tolist() == [0.0, 1.5]


def test_mooncake_jsonl_converts_ms_and_ignores_other_keys(tmp_path: Path) -> None:
    text = (
        '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [1, 2]}\n'
        '{"timestamp": 30535, "input_length": 6472, "output_length": 26, "hash_ids": [3]}\n'
    )
    trace = load_trace(write(tmp_path, "m.jsonl", text))
    assert trace.format == "mooncake"
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 3.053])
    assert trace.prompt_tokens.tolist() == [6955, 6472]
    assert trace.output_tokens.tolist() == [52, 26]


def test_vidur_csv_reads_arrivals_and_accepts_integral_floats(tmp_path: Path) -> None:
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n10.5,374.0,44\n12.0,396,109\n"
    trace = load_trace(write(tmp_path, "v.csv", text))
    assert trace.format == "vidur" and trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.prompt_tokens.tolist() == [374, 396]


def test_vidur_csv_without_arrived_at_is_lengths_only(tmp_path: Path) -> None:
    text = "num_prefill_tokens,num_decode_tokens\n374,44\n396,109\n"
    trace = load_trace(write(tmp_path, "v.csv", text))
    assert not trace.has_arrivals and np.isnan(trace.arrival_s).all()
    assert trace.output_tokens.tolist() == [44, 109]


def test_canonical_jsonl_reads_prompts_and_intervals(tmp_path: Path) -> None:
    text = (
        '{"arrival_s": 2.0, "prompt_tokens": 7, "output_tokens": 9, "prompt": "hi", '
        '"lo": 5, "hi": 12, "id": "x"}\n'
        '{"arrival_s": 2.25, "prompt_tokens": 3, "output_tokens": 1, "prompt": "yo", '
        '"lo": 1, "hi": 1}\n'
    )
    trace = load_trace(write(tmp_path, "c.jsonl", text))
    assert trace.format == "jsonl" and trace.arrival_s.tolist() == [0.0, 0.25]
    assert trace.prompts == ("hi", "yo")
    assert trace.lo is not None and trace.lo.tolist() == [5, 1]
    assert trace.hi is not None and trace.hi.tolist() == [12, 1]


def test_canonical_jsonl_without_arrival_s_is_lengths_only(tmp_path: Path) -> None:
    text = '{"prompt_tokens": 7, "output_tokens": 9}\n\n{"prompt_tokens": 3, "output_tokens": 1}\n'
    trace = load_trace(write(tmp_path, "c.jsonl", text))
    assert not trace.has_arrivals and len(trace) == 2
    assert trace.lo is None and trace.hi is None and trace.prompts is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("azure_conv_head.csv", "azure"),
        ("vidur_conv_head.csv", "vidur"),
        ("vidur_conv_head_lengths_only.csv", "vidur"),
        ("mooncake_conv_head.jsonl", "mooncake"),
        ("conv_head.jsonl", "jsonl"),
    ],
)
def test_format_is_detected_from_extension_and_content(name: str, expected: str) -> None:
    assert detect_format(DATA / "examples" / name) == expected
    assert load_trace(DATA / "examples" / name).format == expected


def test_unknown_extension_is_detected_from_first_character(tmp_path: Path) -> None:
    csv_text = "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,2\n"
    json_text = '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 2}\n'
    assert detect_format(write(tmp_path, "a.txt", csv_text)) == "vidur"
    assert detect_format(write(tmp_path, "b.txt", json_text)) == "jsonl"
    assert load_trace(write(tmp_path, "c.data", csv_text), fmt="vidur").format == "vidur"


def test_examples_in_every_format_hold_the_same_requests() -> None:
    reference = load_trace(DATA / "examples" / "azure_conv_head.csv")
    assert len(reference) == 20 and reference.source.endswith("azure_conv_head.csv")
    for path in sorted((DATA / "examples").iterdir()):
        trace = load_trace(path)
        assert trace.prompt_tokens.tolist() == reference.prompt_tokens.tolist(), path.name
        assert trace.output_tokens.tolist() == reference.output_tokens.tolist(), path.name
        if trace.has_arrivals:  # mooncake rounds to whole milliseconds
            np.testing.assert_allclose(trace.arrival_s, reference.arrival_s, atol=5e-4, rtol=0)
    assert set(FORMATS) == {"azure", "mooncake", "vidur", "jsonl"}


def test_real_azure_conv_trace_loads_quickly_and_sorted() -> None:
    start = time.perf_counter()
    trace = load_trace(DATA / "traces" / "azure_conv_2023.csv")
    elapsed_s = time.perf_counter() - start
    assert len(trace) == 19366 and trace.format == "azure"
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0.0)
    assert 57 * 60 < trace.arrival_s[-1] < 59 * 60  # about 58 minutes
    assert trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1
    assert elapsed_s < 2.0  # typically ~0.1 s; generous for loaded CI machines


# --- malformed files ------------------------------------------------------------------------

ROW = "2023-11-16 18:15:46.6805900"
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
REC = '{"prompt_tokens": 2, "output_tokens": 1}\n'  # a valid canonical record
MOON = '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'


def rec(extra: str) -> str:
    """A canonical record with ``extra`` JSON members appended."""
    return REC.replace("}", f", {extra}}}")


MALFORMED = [  # (file name, content, fmt, line, field, part of the message)
    ("a.csv", AZURE_HEADER + f"{ROW},1,1\n{ROW},abc,1\n", None, 3, "ContextTokens", "got 'abc'"),
    ("a.csv", AZURE_HEADER + f"{ROW},1,-4\n", None, 2, "GeneratedTokens", "positive integer"),
    ("a.csv", AZURE_HEADER + f"{ROW},1,0\n", None, 2, "GeneratedTokens", "got '0'"),
    ("a.csv", AZURE_HEADER + f"{ROW},1.5,3\n", None, 2, "ContextTokens", "got '1.5'"),
    ("a.csv", AZURE_HEADER + "2023-11-31 10:00:00,1,1\n", None, 2, "TIMESTAMP", "timestamp like"),
    ("a.csv", AZURE_HEADER + "yesterday,1,1\n", None, 2, "TIMESTAMP", "got 'yesterday'"),
    ("a.csv", AZURE_HEADER + f"{ROW},1,1\n{ROW},7\n", None, 3, "GeneratedTokens", "2 values"),
    ("a.csv", "TIMESTAMP,ContextTokens\n" + f"{ROW},1\n", "azure", 1, "GeneratedTokens", "column"),
    ("v.csv", "num_prefill_tokens,num_decode_tokens\n", None, 1, None, "no requests"),
    ("v.csv", VIDUR + "nan,1,1\n", None, 2, "arrived_at", "number of seconds"),
    ("x.csv", "a,b,c\n1,2,3\n", None, 1, None, "unknown format"),
    ("x.csv", "", None, 1, None, "empty file"),
    ("x.jsonl", "\n  \n", None, 1, None, "empty file"),
    ("c.jsonl", REC + '{"prompt_tokens": 1,\n', None, 2, None, "invalid JSON"),
    ("c.jsonl", REC + "[1, 2]\n", None, 2, None, "expected a JSON object, got list"),
    ("c.jsonl", REC + '\n{"prompt_tokens": 1}\n', None, 3, "output_tokens", "missing key"),
    ("c.jsonl", REC.replace("2", "true"), None, 1, "prompt_tokens", "got true"),
    ("c.jsonl", rec('"lo": 9, "hi": 4'), None, 1, "hi", "expected hi >= lo (9), got 4"),
    ("c.jsonl", rec('"lo": 0, "hi": 4'), None, 1, "lo", "positive integer"),
    ("c.jsonl", rec('"lo": 3'), None, 1, "hi", "'lo' and 'hi' go together"),
    ("c.jsonl", REC + rec('"lo": 1, "hi": 2'), None, 2, "lo", "missing on line 1"),
    ("c.jsonl", rec('"arrival_s": 0') + REC, None, 2, "arrival_s", "given on line 1"),
    ("c.jsonl", rec('"prompt": 5'), None, 1, "prompt", "expected a string, got 5"),
    ("m.jsonl", MOON + MOON.replace(', "output_length": 1', ""), None, 2, "output_length", "key"),
    ("m.jsonl", MOON.replace("0", '"soon"'), None, 1, "timestamp", "number of milliseconds"),
    ("u.jsonl", '{"foo": 1}\n', None, 1, None, "unknown format"),
]


@pytest.mark.parametrize(("name", "text", "fmt", "line", "field", "snippet"), MALFORMED)
def test_malformed_file_raises_one_line_error_naming_file_line_and_field(
    tmp_path: Path,
    name: str,
    text: str,
    fmt: str | None,
    line: int,
    field: str | None,
    snippet: str,
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(FormatError) as caught:
        load_trace(path, fmt)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.line, error.field) == (line, field)
    prefix = f"{path}:{line}: " + ("" if field is None else f"field {field!r}: ")
    assert str(error).startswith(prefix), str(error)
    assert snippet in str(error) and "\n" not in str(error)


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(AZURE_HEADER.encode() + f"{ROW},1,1\n".encode() + b"\xff\xfe,1,1\n")
    with pytest.raises(FormatError, match=r"a\.csv:3: not UTF-8 text"):
        load_trace(path)


def test_unknown_format_name_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE_HEADER + f"{ROW},1,1\n")
    with pytest.raises(FormatError, match=r"unknown format 'sharegpt'; expected one of az"):
        load_trace(path, "sharegpt")


def test_format_error_survives_pickling() -> None:
    error = FormatError("x.csv", 17, "expected a positive integer, got 'abc'", "ContextTokens")
    copy = pickle.loads(pickle.dumps(error))
    assert (
        str(copy)
        == str(error)
        == ("x.csv:17: field 'ContextTokens': expected a positive integer, got 'abc'")
    )
    record = FormatError("m.json", None, "missing", "output", record=2)
    assert str(pickle.loads(pickle.dumps(record))) == "m.json: record 2: field 'output': missing"


def test_gzipped_jsonl_trace_reads_like_the_plain_file(tmp_path: Path) -> None:
    # a raw U+2028 inside a string is not a line break: lines are split on "\n" only
    lines = rec('"prompt": "a\u2028b"') + rec('"prompt": "c"')
    plain = write(tmp_path, "c.jsonl", lines)
    packed = tmp_path / "c.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    got = load_trace(packed)
    assert got.format == "jsonl" and got.prompts == ("a\u2028b", "c")
    assert got.prompt_tokens.tolist() == load_trace(plain).prompt_tokens.tolist() == [2, 2]
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(FormatError, match=r"bad\.jsonl\.gz: cannot read"):
        load_trace(tmp_path / "bad.jsonl.gz")


# --- Trace invariants ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt_tokens": np.array([1, 2], dtype=np.int64)},  # length mismatch
        {"prompt_tokens": np.array([1, 0, 3], dtype=np.int64)},  # empty prompt
        {"output_tokens": np.array([1, 2, 3], dtype=np.int32)},  # wrong dtype
        {"lo": np.array([1, 1, 1], dtype=np.int64)},  # lo without hi
        {"lo": np.array([1, 5, 1], dtype=np.int64), "hi": np.array([2, 4, 1], dtype=np.int64)},
        {"lo": np.array([0, 1, 1], dtype=np.int64), "hi": np.array([2, 4, 1], dtype=np.int64)},
        {"prompts": ("a", "b")},
    ],
)
def test_trace_rejects_invalid_columns(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_trace([0.0, 1.0, 2.0], **kwargs)


@pytest.mark.parametrize(
    "arrival_s", [[0.5, 1.0], [0.0, 2.0, 1.0], [0.0, float("nan")], [0.0, float("inf")], []]
)
def test_trace_rejects_invalid_arrivals(arrival_s: list[float]) -> None:
    with pytest.raises(ValueError):
        make_trace(arrival_s)


def test_trace_arrays_are_read_only_copies_and_equality_compares_contents() -> None:
    prompt = np.array([4, 5], dtype=np.int64)
    trace = make_trace([0.0, 1.0], prompt_tokens=prompt)
    prompt[0] = 99
    assert trace.prompt_tokens.tolist() == [4, 5]
    with pytest.raises(ValueError):
        trace.prompt_tokens[0] = 7
    assert trace == make_trace([0.0, 1.0], prompt_tokens=np.array([4, 5], dtype=np.int64))
    assert trace != make_trace([0.0, 2.0], prompt_tokens=np.array([4, 5], dtype=np.int64))
    assert make_trace([np.nan, np.nan]) == make_trace([np.nan, np.nan])


# --- arrival control ------------------------------------------------------------------------


def test_rate_scale_divides_every_gap() -> None:
    trace = make_trace([0.0, 1.0, 3.0, 7.0])
    assert with_arrivals(trace, rate_scale=2.0).arrival_s.tolist() == [0.0, 0.5, 1.5, 3.5]
    six_x = with_arrivals(trace, rate_scale=6.0)
    np.testing.assert_allclose(np.diff(six_x.arrival_s), np.diff(trace.arrival_s) / 6.0)
    assert with_arrivals(trace) == trace


def test_poisson_rate_has_mean_gap_one_over_rate_and_is_seeded() -> None:
    trace = make_trace([np.nan] * 5000)
    fast = with_arrivals(trace, rate=40.0, seed=3)
    gaps = np.diff(fast.arrival_s)
    assert fast.arrival_s[0] == 0.0 and np.all(gaps >= 0.0) and len(fast) == 5000
    assert abs(gaps.mean() - 1 / 40.0) < 0.05 / 40.0  # 5000 draws: std of the mean ~1.4%
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: CV = 1
    assert with_arrivals(trace, rate=40.0, seed=3) == fast
    assert with_arrivals(trace, rate=40.0, seed=4) != fast
    assert fast.prompt_tokens.tolist() == trace.prompt_tokens.tolist()


def test_backlog_puts_every_request_at_zero() -> None:
    trace = with_arrivals(make_trace([0.0, 1.0, 3.0]), backlog=True)
    assert trace.arrival_s.tolist() == [0.0, 0.0, 0.0] and trace.has_arrivals


def test_limit_keeps_first_requests_before_other_modes() -> None:
    lo, hi = np.array([1, 2, 3], dtype=np.int64), np.array([4, 5, 6], dtype=np.int64)
    trace = make_trace([0.0, 1.0, 3.0], lo=lo, hi=hi, prompts=("a", "b", "c"))
    first_two = with_arrivals(trace, limit=2, rate_scale=2.0)
    assert first_two.arrival_s.tolist() == [0.0, 0.5] and first_two.prompts == ("a", "b")
    assert first_two.lo is not None and first_two.lo.tolist() == [1, 2]
    assert len(with_arrivals(trace, limit=2, rate=1.0)) == 2
    assert with_arrivals(trace, limit=10) == trace
    with pytest.raises(ValueError, match="limit"):
        with_arrivals(trace, limit=0)


def test_lengths_only_trace_needs_backlog_or_rate() -> None:
    trace = make_trace([np.nan, np.nan])
    for kwargs in ({}, {"rate_scale": 2.0}, {"limit": 1}):
        with pytest.raises(ValueError, match="--backlog.*--rate"):
            with_arrivals(trace, **kwargs)
    assert with_arrivals(trace, backlog=True).arrival_s.tolist() == [0.0, 0.0]
    assert with_arrivals(trace, rate=1.0).has_arrivals


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_scale": 2.0, "rate": 1.0},
        {"rate": 1.0, "backlog": True},
        {"rate_scale": 2.0, "backlog": True},
        {"rate": 0.0},
        {"rate": float("inf")},
        {"rate_scale": -1.0},
        {"rate_scale": float("nan")},
    ],
)
def test_invalid_arrival_options_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        with_arrivals(make_trace([0.0, 1.0]), **kwargs)  # type: ignore[arg-type]
