"""Incremental detokenization across a hand-over: no character lost or doubled at the seam."""

from __future__ import annotations

import pytest

from service.worker.detok import IncrementalDetokenizer


class ByteTokenizer:
    """One token per UTF-8 byte: multi-byte characters always span several tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: list[int]) -> str:
        return bytes(token_ids).decode(errors="replace")


TEXT = "héllo wörld ✓ 🙂 done"


@pytest.mark.parametrize("cut", range(1, len(TEXT.encode())))
def test_text_continues_exactly_on_another_detokenizer(cut: int) -> None:
    tokenizer = ByteTokenizer()
    prompt, output = tokenizer.encode("prompt: "), tokenizer.encode(TEXT)
    first = IncrementalDetokenizer(tokenizer, prompt)
    sent = "".join(first.add(t) for t in output[:cut])
    second = IncrementalDetokenizer(tokenizer, prompt, output[:cut])
    rest = "".join(second.add(t) for t in output[cut:])
    assert sent + rest == TEXT
