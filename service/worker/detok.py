"""Incremental detokenization: the text each new output token adds (vLLM's prefix/read offsets).

Decoding a token alone loses what depends on its neighbours (SentencePiece's leading space,
multi-byte characters split across tokens), so the text of a new token is decode(window) minus
decode(window before it), with a few prompt tokens as the initial window. A delta that ends in
an incomplete character ("\\ufffd") is held back until the next token completes it.
A request that continues elsewhere (a prefill/decode hand-over, a failover) replays the output
tokens it already has, so the new detokenizer holds back exactly what the old one held back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

PROMPT_CONTEXT_TOKENS = 5


class _Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class IncrementalDetokenizer:
    """Text deltas for one request's output tokens; memory stays bounded by the window."""

    def __init__(
        self,
        tokenizer: _Decoder,
        prompt_token_ids: Sequence[int],
        output_token_ids: Sequence[int] = (),
    ) -> None:
        """`output_token_ids`: tokens whose text was streamed already (by another worker); the
        text they held back, an incomplete character at their end, comes with the next token."""
        self._tokenizer = tokenizer
        self._ids = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        for token_id in output_token_ids:
            self.add(token_id)

    def add(self, token_id: int) -> str:
        """Append `token_id`; return the text it completes ("" while a character is partial)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset])
        full = decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        del self._ids[: self._prefix_offset]  # keep only the window
        self._read_offset -= self._prefix_offset
        self._prefix_offset = 0
        return full[len(prefix) :]
