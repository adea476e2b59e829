"""The gateway's routes: OpenAI-compatible generation, models, health, readiness, metrics.

POST /v1/completions and /v1/chat/completions answer whole (JSON) or streamed (SSE); GET
/v1/models, /health (process up), /ready (backend accepting; 503 otherwise), /metrics
(Prometheus text from the app's own registry) and /v1/scheduler (backend state + gateway queue).
Invariant: every accepted request's Job is closed by the response that carries it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.gateway.gateway import Gateway, Job, Options
from service.http.errors import ApiError
from service.http.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from service.http.streaming import (
    ChatFormat,
    CompletionFormat,
    Format,
    JobStreamingResponse,
    collect_or_cancel,
    event_stream,
    usage_of,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 502, 503, 504)
}
_SERVER_ERROR_CODES = {502: "bad_gateway", 503: "upstream_unavailable", 504: "upstream_timeout"}
router = APIRouter()


def gateway_of(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def _options(body: CompletionRequest | ChatCompletionRequest) -> Options:
    return Options(
        max_tokens=body.output_cap(),
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
        priority=body.priority or 0,
        length_hint=body.length_hint,
        temperature=0.0 if body.temperature is None else body.temperature,  # greedy by default
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
        stop_token_ids=tuple(body.stop_token_ids or ()),
    )


async def _respond(
    request: Request, job: Job, fmt: Format, *, stream: bool, usage: bool
) -> Response:
    try:
        if stream:
            return JobStreamingResponse(job, event_stream(job, fmt, include_usage=usage))
        text = await collect_or_cancel(request, job)
    except BaseException:
        job.close()
        raise
    if job.finish_reason == "error":
        raise _generation_error(job)
    body = fmt.whole(text, job.finish_reason, usage_of(job))
    return Response(body, media_type="application/json")


def _generation_error(job: Job) -> ApiError:
    """500, or the status the backend chose (an upstream's 502/503/504, or its 4xx)."""
    status = job.error_status or 500
    message = job.error or "generation failed"
    if status < 500:
        return ApiError(status, message, code="upstream_rejected")
    code = _SERVER_ERROR_CODES.get(status, "generation_failed")
    return ApiError(status, message, type="server_error", code=code)


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    gateway = gateway_of(request)
    gateway.check_model(body.model)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    prompt: str | list[int] | None = body.prompt_text()
    if prompt is None:
        prompt = body.prompt_token_ids() or []
    job = await gateway.submit(request_id, prompt, _options(body))
    fmt = CompletionFormat(request_id, gateway.model_name, int(time.time()))
    return await _respond(request, job, fmt, stream=bool(body.stream), usage=body.include_usage)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    gateway = gateway_of(request)
    gateway.check_model(body.model)
    gateway.check_cap("max_tokens", body.max_tokens)  # checked even when max_completion_tokens wins
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    job = await gateway.submit(request_id, body.prompt_text(), _options(body))
    created = int(time.time())
    fmt = ChatFormat(request_id, gateway.model_name, created, include_usage=body.include_usage)
    return await _respond(request, job, fmt, stream=bool(body.stream), usage=body.include_usage)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    gateway = gateway_of(request)
    name = gateway.model_name
    card = ModelCard(
        id=name,
        created=gateway.created,
        root=gateway.settings.model or name,
        max_model_len=gateway.max_model_len,
    )
    return ModelList(data=[card])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up (even while the workers start or drain)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "not accepting requests"}})
async def ready(request: Request) -> JSONResponse:
    """200 while the backend accepts requests; 503 while starting, draining, or broken."""
    is_ready = gateway_of(request).is_ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gateway = gateway_of(request)
    backend = gateway.backend
    gateway.metrics.observe_readiness(backend.describe(), backend.is_ready())
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/scheduler")
async def scheduler(request: Request) -> dict[str, Any]:
    """Policy, queue depth, KV usage and per-worker state (backend.describe()) + gateway queue."""
    return gateway_of(request).describe()
