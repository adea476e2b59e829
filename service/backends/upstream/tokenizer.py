"""The gateway's tokenizer for the `openai-upstream` engine (docs/serving-upstream.md).

With `--tokenizer DIR` (the upstream model's own tokenizer, a local Hugging Face directory) the
gateway counts exactly what the upstream will see and forwards prompt token ids. Without it,
prompts are counted with the Llama-3 tokenizer of `predictors.tokenizer` (an estimate for other
models) and forwarded as text, which the upstream tokenizes itself: Llama-3's byte-level BPE
decodes its own encoding back to the identical text, so nothing is lost on the way.
"""

from __future__ import annotations

from pathlib import Path

from service.engines.hf import HFTokenizer
from service.settings import Settings


class Llama3Tokenizer:
    """`predictors.tokenizer`'s Llama-3 encoding as a gateway Tokenizer (ordinary tokens only)."""

    eos_token_id: int | None = None  # special tokens are not part of the encoding

    def __init__(self) -> None:
        from predictors.tokenizer import TokenizerUnavailableError, _encoder

        try:
            self._encoding = _encoder()
        except TokenizerUnavailableError as exc:  # one clear line from the CLI, not a traceback
            raise RuntimeError(f"the default Llama-3 tokenizer is unavailable: {exc}") from exc
        self.vocab_size = int(self._encoding.n_vocab)

    def encode(self, text: str) -> list[int]:
        return list(self._encoding.encode_ordinary(text))

    def decode(self, token_ids: list[int]) -> str:
        return str(self._encoding.decode(token_ids))


def load_tokenizer(settings: Settings) -> HFTokenizer | Llama3Tokenizer:
    """`settings.tokenizer` (a local directory; never downloads), else Llama-3's."""
    if settings.tokenizer is None:
        return Llama3Tokenizer()
    path = Path(settings.tokenizer)
    if not path.is_dir():
        raise ValueError(f"tokenizer {settings.tokenizer!r} is not a local directory")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise RuntimeError("--tokenizer needs transformers: pip install 'kvsched[hf]'") from exc
    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
