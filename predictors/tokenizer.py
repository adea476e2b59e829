"""Token counts for length data (docs/predictors.md, "The data and the tokenizer"): the Llama-3
tokenizer, one for all data.

Which tokenizer: the official Llama-3 byte-level BPE (128,000 merge ranks, tiktoken format, the
same one Llama 3.x models serve with), read from ``llama_models/llama3/tokenizer.model`` in the
PyPI package ``llama-models==0.3.0`` (Llama 3 Community License; the file is used in place,
never copied into this repository, and only counts are stored). ``llama_models`` itself is not
imported, so its own dependencies are not needed: ``pip install --no-deps llama-models`` works.
The file's SHA-256 is checked, so every count in the project comes from the same ranks.

What is counted: the text's ordinary tokens only. No BOS / EOS, no chat template, and special
token strings such as ``<|eot_id|>`` inside a text count as plain text. A serving engine's
prompt length adds its chat template (typically tens of tokens) on top of these counts.

How it differs from other serving models' tokenizers (measured on English chat text): OpenAI
cl100k gives exactly the same count for 96% of texts, o200k a median ratio of 0.99; Mistral's
SentencePiece tokenizers give about 1.15x, so lengths seen by a Mistral server are about 15%
higher than ours. Rescale, or retrain from that server's completion log, before using the
intervals with a tokenizer far from Llama-3's.

Invariant: ``count_tokens`` returns one int64 >= 0 per text, equal to the per-text counts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from predictors.base import IntArray

if TYPE_CHECKING:
    import tiktoken

TOKENIZER_NAME: Final = "llama3"
TOKENIZER_SHA256: Final = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
NUM_RANKS: Final = 128_000
INSTALL_HINT: Final = 'pip install -e ".[train]"'
_DISTRIBUTION: Final = "llama-models"
_MODEL_FILE: Final = "llama_models/llama3/tokenizer.model"
# the pre-tokenisation pattern of llama_models/llama3/tokenizer.py
_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class TokenizerUnavailableError(ImportError):
    """tiktoken or the llama-models tokenizer file is missing (or not the expected file)."""


def tokenizer_path() -> Path:
    """Where the installed llama-models package keeps the Llama-3 tokenizer file."""
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise TokenizerUnavailableError(
            f"the Llama-3 tokenizer needs the {_DISTRIBUTION} package: {INSTALL_HINT}"
        ) from exc
    path = Path(str(dist.locate_file(_MODEL_FILE)))
    if not path.is_file():
        raise TokenizerUnavailableError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def _read_ranks(path: Path) -> dict[bytes, int]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise TokenizerUnavailableError(
            f"{path} has SHA-256 {digest}, expected {TOKENIZER_SHA256} (llama-models==0.3.0)"
        )
    pairs = (line.split() for line in data.splitlines() if line.strip())
    return {base64.b64decode(token): int(rank) for token, rank in pairs}


@functools.cache
def _encoder() -> tiktoken.Encoding:
    try:
        import tiktoken
    except ImportError as exc:
        raise TokenizerUnavailableError(f"token counting needs tiktoken: {INSTALL_HINT}") from exc
    ranks = _read_ranks(tokenizer_path())
    return tiktoken.Encoding(
        name=TOKENIZER_NAME, pat_str=_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )


def count_tokens(texts: Sequence[str]) -> IntArray:
    """Llama-3 token count of each text (no BOS / EOS), as an int64 array of len(texts)."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = _encoder().encode_ordinary_batch(list(texts), num_threads=1)
    return np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
