"""Tests for predictors/features.py: the FeatureSpec, each feature family, unknown models, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from predictors.base import PromptBatch
from predictors.features import (
    BASE_NAMES,
    FEATURE_VERSION,
    SCAN_HEAD_CHARS,
    UNKNOWN_MODEL,
    FeatureSpec,
    featurize,
)

SPEC = FeatureSpec.for_models(["m-b", "m-a", "", "m-b"])


def _batch(prompts: list[str], models: list[str] | None = None) -> PromptBatch:
    n = len(prompts)
    tokens = np.array([max(1, len(p) // 4) for p in prompts], dtype=np.int64)
    return PromptBatch(tuple(prompts), tokens, tuple(models or ["m-a"] * n), np.full(n, 512))


def _row(prompt: str, model: str = "m-a") -> dict[str, float]:
    values = featurize(SPEC, _batch([prompt], [model]))[0]
    return dict(zip(SPEC.names, values.tolist(), strict=True))


def test_spec_vocabulary_is_sorted_distinct_and_excludes_empty() -> None:
    assert SPEC.models == ("m-a", "m-b")
    assert SPEC.names == (*BASE_NAMES, "model=m-a", "model=m-b", UNKNOWN_MODEL)
    assert FeatureSpec.from_json(SPEC.to_json()) == SPEC


@pytest.mark.parametrize(
    "data",
    [
        {"version": FEATURE_VERSION + 1},
        {"names": ["log_prompt_tokens"]},
        {"models": ["m-a", "m-a"]},
    ],
)
def test_spec_rejects_mismatched_versions_and_names(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FeatureSpec.from_json({**SPEC.to_json(), **data})


@pytest.mark.parametrize("model", ["m-z", ""])
def test_unknown_model_sets_only_the_unknown_flag(model: str) -> None:
    row = _row("hello", model)
    assert row[UNKNOWN_MODEL] == 1.0
    assert row["model=m-a"] == row["model=m-b"] == 0.0
    known = _row("hello", "m-b")
    assert (known["model=m-b"], known["model=m-a"], known[UNKNOWN_MODEL]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("prompt", "flag"),
    [
        ("Please translate this into German: Guten Tag", "kw_translate"),
        ("Give me a summary of the following article.", "kw_summarize"),
        ("TL;DR of the paper below", "kw_summarize"),
        ("Make a list of good names for a cat", "kw_list"),
        ("Explain the theory of relativity", "kw_explain"),
        ("Write a poem about autumn", "kw_creative"),
        ("Implement a function that reverses a string", "kw_code"),
        ("Answer briefly: who won?", "kw_brief"),
        ("Answer in one word.", "kw_brief"),
        ("Walk me through it step by step", "kw_detailed"),
    ],
)
def test_keyword_flags_fire_on_their_words_only(prompt: str, flag: str) -> None:
    row = _row(prompt)
    flags = {name for name in BASE_NAMES if name.startswith("kw_") and row[name] == 1.0}
    assert flag in flags
    assert _row("the weather is nice today")[flag] == 0.0


@pytest.mark.parametrize(
    ("prompt", "name", "number"),
    [
        ("Describe Paris in 200 words.", "req_words", 200),
        ("Write a 500-word essay on trees", "req_words", 500),
        ("Summarize it in three sentences", "req_sentences", 3),
        ("Write two paragraphs, then 4 paragraphs", "req_paragraphs", 4),
        ("List 10 ideas for a party", "req_items", 10),
        ("Give me five tips", "req_items", 5),
    ],
)
def test_requested_counts_are_parsed(prompt: str, name: str, number: int) -> None:
    row = _row(prompt)
    assert row[name] == pytest.approx(math.log1p(number))
    others = {"req_words", "req_sentences", "req_paragraphs", "req_items"} - {name}
    assert all(row[other] == 0.0 for other in others)


def test_question_starts_and_counts() -> None:
    assert _row("Is the sky blue?")["starts_yes_no"] == 1.0
    assert _row("Is the sky blue?")["starts_wh"] == 0.0
    assert _row("  Why is the sky blue?")["starts_wh"] == 1.0
    row = _row("Fix this:\n```py\nx = 1\n```\n- a\n- b\n2. c\nok? really?")
    assert row["code_fences"] == 2.0
    assert row["list_items"] == 3.0
    assert row["question_marks"] == 2.0
    assert row["log_lines"] == pytest.approx(math.log1p(8))


def test_length_columns_follow_prompt_tokens_and_chars() -> None:
    x = featurize(SPEC, _batch(["a" * 400, "b" * 40]))
    assert x[:, 0] == pytest.approx(np.log1p([100, 10]))
    assert x[:, 1] == pytest.approx(np.log1p([400, 40]))
    assert x[:, 2] == pytest.approx([4.0, 4.0])


def test_long_prompts_are_scanned_at_head_and_tail_only() -> None:
    middle = "filler " * SCAN_HEAD_CHARS
    assert _row("Translate: " + middle)["kw_translate"] == 1.0
    assert _row(middle + " now translate it")["kw_translate"] == 1.0
    assert _row(middle + " translate " + middle)["kw_translate"] == 0.0


def test_empty_batch_and_dtype() -> None:
    x = featurize(SPEC, _batch([]))
    assert x.shape == (0, len(SPEC.names)) and x.dtype == np.float64


def test_batch_of_64_costs_well_under_a_millisecond_per_prompt() -> None:
    rng = np.random.default_rng(0)
    words = ["explain", "the", "river", "in", "5", "sentences", "code", "list", "why", "-"]
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(5, 400)))) for _ in range(64)]
    batch = _batch(prompts)
    featurize(SPEC, batch)
    start = time.process_time()
    for _ in range(10):
        featurize(SPEC, batch)
    per_prompt_s = (time.process_time() - start) / (10 * 64)
    assert per_prompt_s < 0.25e-3
