"""The gateway app factory: `uvicorn --factory service.http.app:create_app` (docs/architecture.md).

No module-level app: `create_app()` reads `Settings` (KVSCHED_* env) when none are passed, and
builds the default backend (`service.pool.pool.WorkerPool`), the engine's tokenizer and the length
predictor only when they are not given, importing them lazily, so tests run with fakes alone.
The lifespan starts the backend and, on shutdown, stops accepting before it drains.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

from fastapi import FastAPI

from predictors.base import IntervalPredictor
from service.engines.base import Tokenizer
from service.gateway.gateway import Gateway
from service.http import routes
from service.http.errors import GatewayMiddleware, install_error_handlers
from service.http.openapi import install_openapi
from service.metrics import Metrics
from service.protocol import Backend
from service.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    tokenizer: Tokenizer | None = None,
    predictor: IntervalPredictor | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The OpenAI-compatible gateway over `backend` (default: a WorkerPool from `settings`).

    `predictor=None` loads `settings.predictor` ("default", a model file, or "none" for no
    predictor: intervals are then [1, max_tokens] unless a request sends `length_hint`).
    `metrics`: pass the one a given backend reports to; the default pool gets the app's.
    """
    if settings is None:
        settings = Settings()  # type: ignore[call-arg]  # all fields have defaults (env read here)
    if metrics is None:
        metrics = Metrics(settings.model_name)
    if tokenizer is None:
        tokenizer = _default_tokenizer(settings)
    if backend is None:
        backend = _default_backend(settings, metrics, tokenizer)
    if predictor is None:
        predictor = _default_predictor(settings)
    gateway = Gateway(settings, backend, tokenizer, predictor, metrics)
    app = FastAPI(
        title="kvsched",
        summary="OpenAI-compatible LLM serving with KV-cache-aware scheduling",
        lifespan=_lifespan(gateway),
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(routes.router)
    install_openapi(app, gateway)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        api_keys=settings.all_api_keys(),
        open_paths=settings.open_paths,
        on_response=metrics.observe_response,
    )
    return app


def _lifespan(gateway: Gateway) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        # startup objects (predictor, tokenizer, FastAPI's routes) never die: keep them out of
        # the collector's generations, so a full collection does not pause every request
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()

    return lifespan


def _default_backend(settings: Settings, metrics: Metrics, tokenizer: Tokenizer) -> Backend:
    """WorkerPool; `openai-upstream` and `vllm` bring their own Backend (no worker processes)."""
    backend: Backend
    if settings.engine == "openai-upstream":
        upstream = importlib.import_module("service.backends.upstream")
        backend = upstream.UpstreamBackend(settings, tokenizer, metrics=metrics)
    elif settings.engine == "vllm":
        vllm_engine = importlib.import_module("service.backends.vllm")
        backend = vllm_engine.VllmBackend(settings, metrics=metrics)
    else:
        backend = importlib.import_module("service.pool.pool").WorkerPool(settings, metrics=metrics)
    return backend


# the module whose load_tokenizer(settings) gives each engine's tokenizer
TOKENIZER_MODULES: Final = {
    "sim": "service.engines.sim",
    "hf": "service.engines.hf",
    "vllm": "service.backends.vllm",
    "openai-upstream": "service.backends.upstream",
}


def _default_tokenizer(settings: Settings) -> Tokenizer:
    engine = importlib.import_module(TOKENIZER_MODULES[settings.engine])
    tokenizer: Tokenizer = engine.load_tokenizer(settings)
    return tokenizer


def _default_predictor(settings: Settings) -> IntervalPredictor | None:
    if settings.predictor == "none":
        return None
    from predictors.default import load_predictor

    return load_predictor(settings.predictor)
