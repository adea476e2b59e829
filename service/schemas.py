"""OpenAI / vLLM wire formats for /v1/completions and /v1/chat/completions (ecosystem.md §1.9).

Requests are strict (a wrong JSON type is a 400, never coerced) and ignore unknown fields, like
vLLM; `temperature`, `top_p` and `stop` are accepted and ignored (the engines decode greedily /
deterministically). Responses and stream chunks serialise to the same JSON keys as vLLM's, so
OpenAI SDKs and `vllm bench serve` parse them unchanged. Chat template: `chat_prompt`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

_STRICT = ConfigDict(strict=True, extra="ignore")


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool | None = None


class _GenerationParams(BaseModel):
    """Fields shared by both endpoints: OpenAI's, vLLM's extras, and our `length_hint`.

    `length_hint`: the client's guess of the output length. The gateway widens the predicted
    interval to contain it: [min(lo, hint), max(hi, hint)], capped to [1, max_tokens]; with no
    predictor configured the interval is [hint, hint]. A wrong hint costs efficiency, never a
    request (the scheduler evicts or refines on a miss).
    """

    model_config = _STRICT

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = 1
    stop: str | list[str] | None = None
    priority: int | None = 0
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(0, ge=0)
    length_hint: int | None = Field(None, ge=1)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise PydanticCustomError("unsupported_n", "only n=1 is supported")
        return n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_GenerationParams):
    """POST /v1/completions: `prompt` is one non-empty string (or a list holding exactly one)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_non_empty_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise PydanticCustomError("prompt_list", "prompt must be a string or a list of one")
        if not (prompt if isinstance(prompt, str) else prompt[0]):
            raise PydanticCustomError("empty_prompt", "prompt must not be empty")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def output_cap(self) -> int | None:
        return self.max_tokens


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_GenerationParams):
    """POST /v1/chat/completions; `max_completion_tokens` wins over the older `max_tokens`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def prompt_text(self) -> str:
        return chat_prompt(self.messages)

    def output_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The chat template: each message as `<|role|>\\n{text}\\n`, then `<|assistant|>\\n`.

    Text content parts of one message are concatenated. The template is the same for every
    engine (the simulated one has no template of its own; a real model's would go here).
    """
    turns = "".join(f"<|{m.role}|>\n{m.text()}\n" for m in messages)
    return f"{turns}<|assistant|>\n"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A whole completion, and (with one partial choice) a streamed chunk: vLLM uses one shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """A chunk's delta: only the keys that are set (`{"role": ..., "content": ""}` first)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kvsched"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail
