"""PCA of MiniLM prompt embeddings: the optional embedding columns of the P2 features
(docs/predictors.md).

`fit_projection` centres the training prompts' 384-d embeddings and keeps the top `dims` right
singular vectors (numpy SVD, sign fixed so the largest-|x| entry of each is positive); the mean
and components live in the model file as JSON (exact float64 round trip). Invariant: a prompt's
columns depend only on its text and the stored projection, never on the rest of the batch's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from predictors.embedding import (
    EMBEDDING_DIM,
    MAX_SEQ_TOKENS,
    MODEL_NAME,
    MODEL_SHA256,
    EmbeddingCache,
)

FloatArray = NDArray[np.float64]
PCA_MEMBER: Final = "embedding_pca.json"  # model-file member holding mean and components


@dataclass(frozen=True, slots=True, eq=False)
class EmbeddingProjection:
    """mean (384,) and components (dims, 384) of the PCA; `cache` is runtime-only (not saved)."""

    mean: FloatArray = field(repr=False)
    components: FloatArray = field(repr=False)
    cache: EmbeddingCache | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        dims = self.components.shape[0] if self.components.ndim == 2 else 0
        if self.mean.shape != (EMBEDDING_DIM,) or self.components.shape != (dims, EMBEDDING_DIM):
            raise ValueError(f"PCA needs mean ({EMBEDDING_DIM},) and components (d, 384)")
        if not 1 <= dims <= EMBEDDING_DIM:
            raise ValueError(f"embedding dims must be in [1, {EMBEDDING_DIM}], got {dims}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.components).all()):
            raise ValueError("PCA mean and components must be finite")

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def names(self) -> tuple[str, ...]:
        return tuple(f"emb_pc{i}" for i in range(self.dims))

    def project(self, vectors: NDArray[Any]) -> FloatArray:
        """(n, dims) coordinates of (n, 384) embeddings."""
        out: FloatArray = (vectors.astype(np.float64) - self.mean) @ self.components.T
        return out

    def features(self, prompts: Sequence[str]) -> FloatArray:
        """(len(prompts), dims): each distinct prompt embedded once (through `cache` if set)."""
        first_row: dict[str, int] = {}
        slot = [first_row.setdefault(p, len(first_row)) for p in prompts]
        if not first_row:
            return np.zeros((0, self.dims))
        distinct = list(first_row)
        if self.cache is not None:
            vectors = self.cache.embed(distinct)
        else:
            from predictors.embedding import embed

            vectors = embed(distinct)
        return self.project(vectors)[slot]

    def header_json(self) -> dict[str, Any]:
        """What the feature spec records in the model header (the arrays go to PCA_MEMBER)."""
        return {
            "model": MODEL_NAME,
            "model_sha256": MODEL_SHA256,
            "max_seq_tokens": MAX_SEQ_TOKENS,
            "pooling": "mean, L2-normalised",
            "dims": self.dims,
            "member": PCA_MEMBER,
        }

    def arrays_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_json(cls, header: dict[str, Any], arrays: dict[str, Any]) -> EmbeddingProjection:
        if header.get("model_sha256") != MODEL_SHA256:
            raise ValueError(f"embedding weights {header.get('model_sha256')!r} are not pinned")
        if int(header.get("max_seq_tokens", -1)) != MAX_SEQ_TOKENS:
            raise ValueError("embedding max_seq_tokens differs from this code's")
        mean = np.asarray(arrays["mean"], dtype=np.float64)
        components = np.asarray(arrays["components"], dtype=np.float64)
        projection = cls(mean, components)
        if projection.dims != int(header["dims"]):
            raise ValueError(f"embedding dims {header['dims']} != {projection.dims} components")
        return projection


def fit_projection(
    vectors: NDArray[Any], dims: int, cache: EmbeddingCache | None = None
) -> EmbeddingProjection:
    """The top-`dims` PCA of (n, 384) training embeddings (one row per distinct prompt)."""
    if not 1 <= dims <= min(len(vectors), EMBEDDING_DIM):
        raise ValueError(f"embedding dims {dims} must be in [1, min(#prompts, 384)]")
    x = vectors.astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:dims]
    signs = np.sign(components[np.arange(dims), np.abs(components).argmax(axis=1)])
    return EmbeddingProjection(mean, components * signs[:, None], cache)
