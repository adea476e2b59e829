"""The OpenAPI document the gateway serves at /openapi.json, made to match what it does.

FastAPI's generated document is corrected where the server differs from FastAPI's defaults:
request validation answers 400 in OpenAI's error shape (never 422), the generation routes
answer `text/event-stream` when `stream` is true, /metrics answers Prometheus' text format, and
the limits known only once the engine started (context length, vocabulary) bound `max_tokens`,
`min_tokens` and token-id prompts. The document is built on first request, after start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST

from service.gateway.gateway import Gateway

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
# with `stream: true`: server-sent events; before OpenAPI 3.2 a stream's `schema` is one event's
_SSE = {
    "schema": {
        "type": "object",
        "description": "one event: `data` is a JSON chunk (the completion object with a partial "
        "choice, or `chat.completion.chunk`), or an error object, and finally `[DONE]`",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
        "required": ["data"],
    },
}


def install_openapi(app: FastAPI, gateway: Gateway) -> None:
    """Replace `app.openapi` with the corrected, lazily built document."""
    app.openapi = _builder(app, gateway)  # type: ignore[method-assign]


def _builder(app: FastAPI, gateway: Gateway) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            _correct(doc, gateway)
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


def _correct(doc: dict[str, Any], gateway: Gateway) -> None:
    for methods in doc.get("paths", {}).values():
        for operation in methods.values():
            operation.get("responses", {}).pop("422", None)
    for path in GENERATION_PATHS:
        operation = doc["paths"][path]["post"]
        operation["responses"]["200"]["content"]["text/event-stream"] = _SSE
        operation["description"] = (
            "Three rules the body schema cannot state are checked too (400 otherwise): the "
            "prompt must have at least one token, its tokens + max_tokens must fit in the context "
            f"({gateway.max_model_len} tokens) and the KV cache, and min_tokens must not exceed "
            "max_tokens. Parameters outside the schema are ignored; the schema allows only the "
            "values kvsched honours."
        )
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    metrics["content"] = {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}
    schemas = doc.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    longest = gateway.max_model_len
    if gateway.kv_capacity_tokens is not None:
        longest = min(longest, gateway.kv_capacity_tokens)
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        if "model" in properties:  # any other name is a 404, as in OpenAI's API
            properties["model"]["anyOf"] = [{"enum": [gateway.model_name]}, {"type": "null"}]
        for key in ("max_tokens", "max_completion_tokens", "min_tokens"):
            _bound(properties.get(key), longest - 1)
    prompt = schemas.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
    for variant in prompt.get("anyOf", []):
        _bound_ids(variant, gateway.tokenizer.vocab_size - 1)


def _bound(schema: dict[str, Any] | None, maximum: int) -> None:
    """Set `maximum` on an integer schema (or its integer branch of `anyOf`)."""
    if schema is None:
        return
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "integer":
            branch["maximum"] = maximum


def _bound_ids(schema: dict[str, Any], maximum: int) -> None:
    items = schema.get("items")
    if isinstance(items, dict):
        if items.get("type") == "integer":
            items["maximum"] = maximum
        else:
            _bound_ids(items, maximum)
