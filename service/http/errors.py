"""HTTP errors in OpenAI's shape, and the gateway's outer ASGI middleware (docs/serving.md, "Bad
input, overload, faults").

Every error leaves as `{"error": {"message", "type", "param", "code"}}`: `ApiError` raised in a
route, FastAPI's request-validation errors (400, not 422), Starlette's 404/405, and anything
unexpected (500, logged). The middleware answers 401 (API keys) and 413 (body size, by
Content-Length and by the bytes actually received) before a route runs.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger("kvsched.gateway")


class ApiError(Exception):
    """An error the client gets as an OpenAI error object with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.detail).model_dump()
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_tag(part: str) -> bool:
    """A location part pydantic adds that is no field name: a union branch or a list index."""
    return (
        "[" in part
        or part in _UNION_TAGS
        or part.isdigit()
        or part.startswith(("constrained-", "function-"))
    )


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line for the most specific error (deepest location), and its field as `param`."""
    if not errors:
        return "invalid request body", None
    first = max(errors, key=lambda error: len(error.get("loc", ())))
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return f"malformed JSON body: {reason}", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not loc and first.get("type") == "missing":
        return "a JSON object body is required", None
    field = [part for part in loc if not _is_tag(part)]
    param = ".".join(field) or None
    msg = str(first.get("msg", "invalid request"))
    return (f"{'.'.join(loc)}: {msg}" if loc else f"request body: {msg}"), param


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc.errors())
    return ApiError(400, message, param=param, code="invalid_value").response()


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, validation errors (-> 400) and HTTP errors to OpenAI's error object."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


class GatewayMiddleware:
    """Outermost checks: Bearer API key (401), body size (413), last-resort 500 in OpenAI form.

    The body is read here in full (at most `max_body_bytes`) and replayed to the app; later
    `receive()` calls go to the server, so routes still see `http.disconnect`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        api_keys: frozenset[str],
        open_paths: Sequence[str],
        on_response: Callable[[str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.on_response = on_response  # (path, status) of every HTTP response
        self.max_body_bytes = max_body_bytes
        self.api_keys = tuple(key.encode() for key in sorted(api_keys))
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.on_response is not None:
            send = _counting(send, scope["path"], self.on_response)
        denied = self._check_key(scope)
        if denied is not None:
            await denied.response()(scope, receive, send)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            too_large = f"request body exceeds the limit of {self.max_body_bytes} bytes"
            await ApiError(413, too_large, code="request_too_large").response()(
                scope, receive, send
            )
            return
        await self._run(scope, _replay(body, receive), send)

    def _check_key(self, scope: Scope) -> ApiError | None:
        if not self.api_keys or scope["path"] in self.open_paths:
            return None
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        headers = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != b"bearer" or not token.strip():
            message = "missing API key: send the header 'Authorization: Bearer <key>'"
            return ApiError(401, message, code="invalid_api_key", headers=headers)
        token = token.strip()
        if not any(hmac.compare_digest(token, key) for key in self.api_keys):
            return ApiError(401, "invalid API key", code="invalid_api_key", headers=headers)
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed the limit."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # disconnected while sending: the route will see nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            error = ApiError(500, "internal server error", type="server_error")
            await error.response()(scope, receive, send)


def _counting(send: Send, path: str, on_response: Callable[[str, int], None]) -> Send:
    async def counting_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            on_response(path, message["status"])
        await send(message)

    return counting_send


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replaying_receive() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replaying_receive
