"""Tests for predictors/tokenizer.py: real Llama-3 counts, batching, missing-dependency errors."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from predictors import tokenizer
from predictors.tokenizer import TokenizerUnavailableError, count_tokens

KNOWN = {
    "Hello world": 2,
    "": 0,
    "Hello, world!": 4,
    " ": 1,
    "1234567": 3,  # digits split in groups of at most three
    "<|begin_of_text|>": 7,  # special-token text counts as plain text
}


@pytest.fixture
def fresh_encoder() -> Iterator[None]:
    """Drop the cached encoder before and after a test that breaks loading on purpose."""
    tokenizer._encoder.cache_clear()
    yield
    tokenizer._encoder.cache_clear()


def test_known_counts() -> None:
    texts = list(KNOWN)
    counts = count_tokens(texts)
    assert counts.dtype == np.int64
    assert counts.tolist() == [KNOWN[t] for t in texts]


def test_batch_equals_per_text_counts() -> None:
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "def f(x):\n    return x ** 2\n",
        "Ünïcödé – 日本語のテキスト 🚀",
        "a" * 1000,
        "\n\n\n",
        "Hello world",
    ]
    batch = count_tokens(texts)
    one_by_one = [int(count_tokens([t])[0]) for t in texts]
    assert batch.tolist() == one_by_one
    assert batch.shape == (len(texts),)
    assert batch[3] < 1000  # BPE merges runs of letters


def test_empty_batch() -> None:
    counts = count_tokens([])
    assert counts.dtype == np.int64 and counts.shape == (0,)


def test_tuple_input_accepted() -> None:
    assert count_tokens(("Hello world", "Hello world")).tolist() == [2, 2]


def test_missing_llama_models_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, fresh_encoder: None
) -> None:
    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[train\]"') as info:
        count_tokens(["Hello world"])
    assert isinstance(info.value, TokenizerUnavailableError)


def test_missing_tiktoken_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, fresh_encoder: None
) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(TokenizerUnavailableError, match=r"tiktoken: pip install -e"):
        count_tokens(["Hello world"])


def test_wrong_tokenizer_file_rejected(
    monkeypatch: pytest.MonkeyPatch, fresh_encoder: None, tmp_path: Path
) -> None:
    fake = tmp_path / "tokenizer.model"
    fake.write_bytes(b"SGVsbG8= 0\n")
    monkeypatch.setattr(tokenizer, "tokenizer_path", lambda: fake)
    with pytest.raises(TokenizerUnavailableError, match="SHA-256"):
        count_tokens(["Hello world"])


def test_tokenizer_file_is_the_pinned_one() -> None:
    path = tokenizer.tokenizer_path()
    assert path.name == "tokenizer.model" and "llama3" in path.parts
    assert tokenizer._encoder().n_vocab == tokenizer.NUM_RANKS
