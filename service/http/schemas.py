"""OpenAI / vLLM wire formats for /v1/completions and /v1/chat/completions (docs/serving.md, "API").

Requests are strict (a wrong JSON type is a 400, never coerced) and ignore unknown fields, like
vLLM. Every OpenAI parameter is either honoured or refused: values outside OpenAI's ranges are a
400, and a parameter no engine here implements (`logprobs`, `echo`, `best_of` > 1, penalties,
`logit_bias`, `suffix`, tools) is a 400 naming it when set to anything but its neutral value
(docs/serving.md, "Parameters"). Responses and stream chunks serialise to the same JSON keys as
vLLM's, so OpenAI SDKs and `vllm bench serve` parse them unchanged. Chat template: `chat_prompt`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

_STRICT = ConfigDict(strict=True, extra="ignore")


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool | None = None


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees), 5.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _no_bool(value: Any) -> Any:
    """Python's True == 1 and False == 0; JSON's true and 1 differ, and so do we."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _bool_only(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("expected a boolean")
    return value


# integers that also take integral floats (5.0), with their bounds in the JSON Schema
Int = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[Annotated[int, Field(ge=1)], BeforeValidator(_integral)]
NonNegativeInt = Annotated[Annotated[int, Field(ge=0)], BeforeValidator(_integral)]
TokenIds = list[NonNegativeInt]
Stop = Annotated[str, Field(min_length=1)]
# parameters accepted only at their neutral value (the schema allows nothing else): name -> it
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "echo": False,
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "suffix": "",
    "tools": [],
    "tool_choice": "none",
    "response_format": {"type": "text"},
}


class TextFormat(BaseModel):
    """`response_format`: plain text only (JSON modes and schemas are refused)."""

    model_config = _STRICT

    type: Literal["text"]


class _GenerationParams(BaseModel):
    """Fields shared by both endpoints: OpenAI's, vLLM's extras, and our `length_hint`.

    `length_hint`: the client's guess of the output length. The gateway widens the predicted
    interval to contain it: [min(lo, hint), max(hi, hint)], capped to [1, max_tokens]; with no
    predictor configured the interval is [hint, hint]. A wrong hint costs efficiency, never a
    request (the scheduler evicts or refines on a miss).
    """

    model_config = _STRICT

    model: str | None = None
    max_tokens: PositiveInt | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: Int | None = None  # any integer; engines use it modulo 2**63
    n: Annotated[Literal[1], BeforeValidator(_integral), BeforeValidator(_no_bool)] | None = 1
    stop: Stop | Annotated[list[Stop], Field(max_length=16)] | None = None
    stop_token_ids: TokenIds | None = Field(None, max_length=64)
    user: str | None = None
    # refused unless neutral (see _NEUTRAL): accepted by the schema so the error names them
    logprobs: Annotated[Literal[False], BeforeValidator(_bool_only)] | None = None
    top_logprobs: Annotated[Literal[0], BeforeValidator(_no_bool)] | None = None
    echo: Annotated[Literal[False], BeforeValidator(_bool_only)] | None = None
    best_of: Annotated[Literal[1], BeforeValidator(_no_bool)] | None = None
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    priority: Int | None = 0
    ignore_eos: bool | None = False
    min_tokens: NonNegativeInt | None = 0
    length_hint: PositiveInt | None = None

    @field_validator(*_NEUTRAL, mode="wrap", check_fields=False)
    @classmethod
    def _refuse_unsupported(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except ValidationError:
            neutral = _NEUTRAL[str(info.field_name)]
            raise PydanticCustomError(
                "unsupported_parameter",
                "{name} is not supported by kvsched (leave it out, or send {neutral})",
                {"name": info.field_name, "neutral": json.dumps(neutral)},
            ) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_GenerationParams):
    """POST /v1/completions: one prompt, as text or token ids.

    `prompt` is a non-empty string, a non-empty list of token ids, or a list holding exactly one
    of either (a batch of one, as OpenAI's SDK sends it).
    """

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[TokenIds, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
        | Annotated[
            list[Annotated[TokenIds, Field(min_length=1)]], Field(min_length=1, max_length=1)
        ]
    )
    suffix: Annotated[str, Field(max_length=0)] | None = None

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt(cls, prompt: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(prompt)
        except ValidationError:
            raise PydanticCustomError(
                "invalid_prompt",
                "prompt must be a non-empty string, a non-empty list of token ids (integers "
                ">= 0), or a list holding exactly one of either",
            ) from None

    def prompt_text(self) -> str | None:
        """The prompt as text (None for a token-id prompt)."""
        prompt = self.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else None

    def prompt_token_ids(self) -> list[int] | None:
        """The prompt as token ids (None for a text prompt)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, list) and not isinstance(prompt[0], str):
            return [t for t in prompt if isinstance(t, int)]  # validated: all of them
        return None

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
    max_completion_tokens: PositiveInt | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = None
    tool_choice: Literal["none"] | None = None
    response_format: TextFormat | None = None

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
