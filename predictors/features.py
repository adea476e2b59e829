"""Cheap prompt features for the output-length models (docs/predictors.md, tier P2).

`FeatureSpec` fixes the feature names and the target-model vocabulary at training time, so a saved
model knows its columns; `featurize` turns a `PromptBatch` into a float64 matrix in that order.
Invariant: the columns depend only on (prompt, prompt_tokens, model) and the `FeatureSpec`, never on
data seen at predict time; an unknown model gets all-zero one-hots and the `model_unknown` flag.
Version 2 adds the target model's family (`families.model_family`: one-hot, or `family_unknown`)
and, optionally, a learned word-lexicon score (`lexicon.py`); a model name absent from training then
still carries its family. Version 1 files (no family, no lexicon) still load and predict.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from predictors.base import PromptBatch
from predictors.families import model_family
from predictors.lexicon import Lexicon

if TYPE_CHECKING:  # the embedding columns are optional; their module loads only when used
    from predictors.embedding_pca import EmbeddingProjection

FloatArray = NDArray[np.float64]
FEATURE_VERSION: Final = 2  # bump when any column changes meaning
SUPPORTED_VERSIONS: Final = (1, 2)  # versions this code computes; others refuse to load
# keyword scans read the head and tail of long prompts only (instructions sit at either end)
SCAN_HEAD_CHARS: Final = 4000
SCAN_TAIL_CHARS: Final = 2000
UNKNOWN_MODEL: Final = "model_unknown"
UNKNOWN_FAMILY: Final = "family_unknown"
LEXICON_NAME: Final = "lexicon_score"

_FLAGS: Final = {  # flag -> (exact lower-case words, "|"-separated phrases found as substrings)
    "kw_translate": (
        "translate translates translated translating translation translations translator",
        "",
    ),
    "kw_summarize": (
        "summarize summarise summarized summarised summarizing summarising summary summaries "
        "condense tldr",
        "tl;dr",
    ),
    "kw_list": ("list lists listing enumerate bullet bullets bulleted", ""),
    "kw_explain": (
        "explain explains explained explaining explanation describe describes described "
        "describing description discuss discussion elaborate",
        "",
    ),
    "kw_creative": (
        "write essay essays story stories poem poems poetry song lyrics haiku limerick blog",
        "",
    ),
    "kw_code": (
        "code coding function functions program programs programming script implement "
        "implementation python javascript java rust bash sql regex algorithm",
        "",
    ),
    "kw_brief": (
        "brief briefly short concise concisely succinct succinctly",
        "one word|one-word|in a word|one sentence|one-sentence",
    ),
    "kw_detailed": (
        "detail details detailed comprehensive comprehensively thorough thoroughly",
        "step by step|step-by-step|in depth|in-depth",
    ),
}
_UNITS: Final = {
    "word": "req_words",
    "sentence": "req_sentences",
    "paragraph": "req_paragraphs",
    "item": "req_items",
    "point": "req_items",
    "example": "req_items",
    "idea": "req_items",
    "tip": "req_items",
    "reason": "req_items",
    "step": "req_items",
    "way": "req_items",
}
_NUMBER_WORDS: Final = {
    "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15,
    "twenty": 20, "thirty": 30, "fifty": 50, "hundred": 100,
}  # fmt: skip
_REQUEST_RE: Final = re.compile(
    r"\b(\d{1,5}|" + "|".join(_NUMBER_WORDS) + r")[\s-]+(" + "|".join(_UNITS) + r")s?\b"
)
_LIST_ITEM_RE: Final = re.compile(r"^[ \t]*(?:[-*\u2022]|\d{1,3}[.)])[ \t]", re.MULTILINE)
_FLAG_OF_WORD: Final = {w: i for i, (words, _) in enumerate(_FLAGS.values()) for w in words.split()}
_FLAG_OF_PHRASE: Final = tuple(
    (p, i) for i, (_, phrases) in enumerate(_FLAGS.values()) for p in phrases.split("|") if p
)
_UNIT_WORDS: Final = frozenset([*_UNITS, *(u + "s" for u in _UNITS)])
_WORD_RE: Final = re.compile(r"[a-z]+")
_YES_NO_STARTS: Final = frozenset(
    "is are was were am do does did can could will would should shall may might must has have "
    "had".split()
)
_WH_STARTS: Final = frozenset("what why how who whom whose when where which".split())
_REQUEST_NAMES: Final = ("req_words", "req_sentences", "req_paragraphs", "req_items")
BASE_NAMES: Final = (
    "log_prompt_tokens",
    "log_chars",
    "chars_per_token",
    "log_lines",
    "question_marks",
    "code_fences",
    "list_items",
    *_FLAGS,
    *_REQUEST_NAMES,
    "starts_yes_no",
    "starts_wh",
)
_TEXT_COLUMNS: Final = len(BASE_NAMES) - 3  # the first three come from lengths, vectorised


def _expected_names(
    models: Sequence[str],
    embedding: EmbeddingProjection | None = None,
    families: Sequence[str] | None = None,
    lexicon: bool = False,
) -> tuple[str, ...]:
    tail = embedding.names() if embedding is not None else ()
    middle: tuple[str, ...] = ()
    if families is not None:  # version 2
        middle = (*(f"family={f}" for f in families), UNKNOWN_FAMILY)
        middle += (LEXICON_NAME,) if lexicon else ()
    return (*BASE_NAMES, *(f"model={m}" for m in models), UNKNOWN_MODEL, *middle, *tail)


@functools.lru_cache(maxsize=4096)
def _family(name: str) -> str:
    return model_family(name)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The feature columns of a trained model: version, target-model vocabulary, names.

    `embedding` (optional, appended last): PCA columns of the prompt's MiniLM embedding. A spec
    without it serialises exactly as before the option existed. Version 2 only: `families`
    (the family vocabulary, one-hot columns after the models') and `lexicon` (one column).
    """

    version: int
    models: tuple[str, ...]
    names: tuple[str, ...]
    embedding: EmbeddingProjection | None = None
    families: tuple[str, ...] = ()
    lexicon: Lexicon | None = None

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"feature version {self.version} is not one this code computes "
                f"({', '.join(map(str, SUPPORTED_VERSIONS))}); retrain the model"
            )
        if len(set(self.models)) != len(self.models) or "" in self.models:
            raise ValueError("model vocabulary must be distinct non-empty names")
        if len(set(self.families)) != len(self.families) or "" in self.families:
            raise ValueError("family vocabulary must be distinct non-empty names")
        if self.version == 1 and (self.families or self.lexicon is not None):
            raise ValueError("feature version 1 has no family or lexicon columns")
        families = self.families if self.version >= 2 else None
        expected = _expected_names(self.models, self.embedding, families, self.lexicon is not None)
        if self.names != expected:
            raise ValueError("feature names do not match this version's features")

    @property
    def knows_families(self) -> bool:
        return self.version >= 2

    @classmethod
    def for_models(
        cls,
        models: Sequence[str],
        embedding: EmbeddingProjection | None = None,
        *,
        families: bool = False,
        lexicon: Lexicon | None = None,
    ) -> FeatureSpec:
        """The spec for a training set whose rows target `models` ("" = unknown, not a column).

        families=True (or a lexicon) gives version 2: family one-hots of the models' families.
        """
        vocab = tuple(sorted({m for m in models if m}))
        if not families and lexicon is None:
            return cls(1, vocab, _expected_names(vocab, embedding), embedding)
        fams = tuple(sorted({f for f in map(_family, vocab) if f}))
        names = _expected_names(vocab, embedding, fams, lexicon is not None)
        return cls(2, vocab, names, embedding, fams, lexicon)

    def to_json(self) -> dict[str, Any]:
        """Header JSON; with an embedding, its arrays go to `embedding.arrays_json()` apart."""
        out: dict[str, Any] = {"version": self.version, "models": list(self.models)}
        out["names"] = list(self.names)
        if self.embedding is not None:
            out["embedding"] = self.embedding.header_json()
        if self.version >= 2:
            out["families"] = list(self.families)
            if self.lexicon is not None:
                out["lexicon"] = self.lexicon.to_json()
        return out

    @classmethod
    def from_json(
        cls, data: dict[str, Any], embedding_arrays: dict[str, Any] | None = None
    ) -> FeatureSpec:
        """Inverse of to_json; `embedding_arrays` is required when data has an "embedding"."""
        embedding = None
        if "embedding" in data:
            from predictors.embedding_pca import EmbeddingProjection

            if embedding_arrays is None:
                raise ValueError("the feature spec has an embedding but no PCA arrays")
            embedding = EmbeddingProjection.from_json(data["embedding"], embedding_arrays)
        names = tuple(data["names"])
        families = tuple(data.get("families", ()))
        lexicon = Lexicon.from_json(data["lexicon"]) if "lexicon" in data else None
        version = int(data["version"])
        return cls(version, tuple(data["models"]), names, embedding, families, lexicon)

    def model_index(self, models: Sequence[str]) -> NDArray[np.int64]:
        """Vocabulary index per row; len(self.models) for an unknown (or empty) model."""
        lookup = self._model_lookup()
        unknown = len(self.models)
        return np.fromiter((lookup.get(m, unknown) for m in models), np.int64, len(models))

    def family_index(self, models: Sequence[str]) -> NDArray[np.int64]:
        """Family-vocabulary index per row; len(self.families) for an unknown family."""
        lookup = _lookup(self.families)
        unknown = len(self.families)
        return np.fromiter((lookup.get(_family(m), unknown) for m in models), np.int64, len(models))

    def tiers(self, models: Sequence[str]) -> NDArray[np.int64]:
        """Per row: 0 = a model seen in training, 1 = unseen model of a seen family, 2 = neither."""
        tier = np.where(self.model_index(models) < len(self.models), 0, 2)
        if self.knows_families:
            fam_known = self.family_index(models) < len(self.families)
            tier = np.where((tier == 2) & fam_known, 1, tier)
        return tier.astype(np.int64)

    def _model_lookup(self) -> dict[str, int]:
        return _lookup(self.models)

    def family_of(self, model: str) -> str:
        """The family a model name maps to ("" for none)."""
        return _family(model)

    def lexicon_column(self) -> int:
        """Index of the lexicon column (version 2 with a lexicon only)."""
        return self.names.index(LEXICON_NAME)


@functools.lru_cache(maxsize=64)
def _lookup(names: tuple[str, ...]) -> dict[str, int]:
    return {m: i for i, m in enumerate(names)}


def _scan_text(text: str) -> str:
    if len(text) > SCAN_HEAD_CHARS + SCAN_TAIL_CHARS:
        text = text[:SCAN_HEAD_CHARS] + "\n" + text[-SCAN_TAIL_CHARS:]
    return text.lower()


def _requested(scan: str, words: set[str]) -> list[float]:
    """log1p of the largest N in "N words / sentences / paragraphs / items" per unit, else 0."""
    found = dict.fromkeys(_REQUEST_NAMES, 0)
    if not _UNIT_WORDS.isdisjoint(words):
        for number, unit in _REQUEST_RE.findall(scan):
            value = int(number) if number.isdigit() else _NUMBER_WORDS[number]
            name = _UNITS[unit]
            found[name] = max(found[name], value)
    return [math.log1p(found[name]) for name in _REQUEST_NAMES]


def _flags(scan: str, words: set[str]) -> list[float]:
    flags = [0.0] * len(_FLAGS)
    for word in words & _FLAG_OF_WORD.keys():
        flags[_FLAG_OF_WORD[word]] = 1.0
    for phrase, index in _FLAG_OF_PHRASE:
        if phrase in scan:
            flags[index] = 1.0
    return flags


def prompt_words(text: str) -> set[str]:
    """The distinct lower-case words of the scanned part of a prompt (what the lexicon reads)."""
    return set(_WORD_RE.findall(_scan_text(text)))


def _text_row(text: str, lexicon: Lexicon | None = None) -> list[float]:
    """Every text-derived column after the first three, in BASE_NAMES order (+ lexicon score)."""
    scan = _scan_text(text)
    tokens = _WORD_RE.findall(scan)
    words = set(tokens)
    first = tokens[0] if tokens else ""
    tail = [lexicon.score(words)] if lexicon is not None else []
    return [
        math.log1p(text.count("\n") + 1),
        float(text.count("?")),
        float(text.count("```")),
        float(len(_LIST_ITEM_RE.findall(scan))),
        *_flags(scan, words),
        *_requested(scan, words),
        1.0 if first in _YES_NO_STARTS else 0.0,
        1.0 if first in _WH_STARTS else 0.0,
        *tail,
    ]


def hide_model_columns(spec: FeatureSpec, x: FloatArray, *, family: bool) -> FloatArray:
    """A copy of feature rows `x` as if their target model (and, with `family`, its family too)
    had not been seen in training: what training shows the boosters for unseen-model rows."""
    out = x.copy()
    start = len(BASE_NAMES)
    out[:, start : start + len(spec.models)] = 0.0
    out[:, start + len(spec.models)] = 1.0
    if family and spec.knows_families:
        start += len(spec.models) + 1
        out[:, start : start + len(spec.families)] = 0.0
        out[:, start + len(spec.families)] = 1.0
    return out


def featurize(spec: FeatureSpec, batch: PromptBatch) -> FloatArray:
    """The (n, len(spec.names)) float64 feature matrix of `batch`, columns in `spec.names` order."""
    n = len(batch)
    out = np.zeros((n, len(spec.names)), dtype=np.float64)
    chars = np.fromiter((len(p) for p in batch.prompts), np.float64, n)
    tokens = batch.prompt_tokens.astype(np.float64)
    out[:, 0] = np.log1p(tokens)
    out[:, 1] = np.log1p(chars)
    out[:, 2] = chars / np.maximum(tokens, 1.0)
    text = np.zeros((n, _TEXT_COLUMNS + (spec.lexicon is not None)))
    if n == 1:  # the gateway's usual batch: no de-duplication needed
        text[0] = _text_row(batch.prompts[0], spec.lexicon)
    elif n:
        first_row: dict[str, int] = {}  # the same prompt (answered by several models): scan once
        slot = [first_row.setdefault(p, len(first_row)) for p in batch.prompts]
        text = np.array([_text_row(p, spec.lexicon) for p in first_row], dtype=np.float64)[slot]
    out[:, 3 : 3 + _TEXT_COLUMNS] = text[:, :_TEXT_COLUMNS]
    start = len(BASE_NAMES)
    out[np.arange(n), start + spec.model_index(batch.models)] = 1.0
    if spec.knows_families:
        start += len(spec.models) + 1
        out[np.arange(n), start + spec.family_index(batch.models)] = 1.0
        if spec.lexicon is not None:
            out[:, start + len(spec.families) + 1] = text[:, _TEXT_COLUMNS]
    if spec.embedding is not None:
        out[:, out.shape[1] - spec.embedding.dims :] = spec.embedding.features(batch.prompts)
    return out
