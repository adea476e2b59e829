"""Target-model families parsed from model names, for models a predictor never saw.

Output lengths differ a lot between target models, so the model name is a feature. A name absent
from training is still informative: "llama-3-70b" answers more like the Llama models the
predictor saw than like the average model. `model_family` maps a name to its family by its
leading name part ("meta-llama/Meta-Llama-3-70B-Instruct" -> "llama", "gpt4_1106_preview" ->
"openai", "Mixtral-8x7B" -> "mistral"); a name with no recognisable part maps to "".
Invariant: pure function of the name (no table of known models), so training and serving agree.
"""

from __future__ import annotations

import re
from typing import Final

# names whose leading word is an organisation or a generic prefix: the family is the next word
_SKIP: Final = frozenset(
    "meta facebook mistralai google microsoft openai anthropic deepseek-ai tiiuae "
    "lmsys huggingfaceh4 nousresearch 01-ai databricks models text chat the".split()
)
# one family per lineage: several product names of one vendor's model line
_ALIASES: Final[dict[str, str]] = {
    "gpt": "openai",
    "chatgpt": "openai",
    "davinci": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "mixtral": "mistral",
    "codestral": "mistral",
    "ministral": "mistral",
    "codellama": "llama",
    "qwq": "qwen",
}
_WORD: Final = re.compile(r"[a-z]+\d?")


def model_family(name: str) -> str:
    """The family of a target-model name, lower case; "" when none can be read from it."""
    base = name.strip().lower().rsplit("/", 1)[-1]
    words: list[str] = _WORD.findall(base)
    for word in words:
        if word in _SKIP:
            continue
        if word in _ALIASES:
            return _ALIASES[word]
        letters = word.rstrip("0123456789")
        if letters in _ALIASES:
            return _ALIASES[letters]
        if len(letters) >= 2:
            return letters
    return ""
