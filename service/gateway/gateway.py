"""The gateway's core, below HTTP: admit, tokenize, predict an interval, run one request.

`Gateway.submit` turns a validated request into a `Job` (a `GenerationRequest` sent to the
`Backend`) or raises `ApiError`. Invariant: `in_flight` counts accepted, unfinished requests;
every Job gives its slot back exactly once (`Job.close`), and closing a Job whose stream has not
finished cancels it on the backend, so a client that goes away frees its KV.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from predictors.base import IntervalPredictor
from service.engines.base import Tokenizer
from service.gateway.completion_log import CompletionLog
from service.gateway.online_calibration import OnlineFeedback
from service.gateway.predict_batcher import IntervalBatcher
from service.gateway.stop import StopMatcher
from service.http.errors import ApiError
from service.metrics import Metrics, RequestObserver
from service.protocol import Backend, FinishReason, GenerationRequest, TokenEvent
from service.settings import Settings

logger = logging.getLogger("kvsched.gateway")
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class Options:
    """Generation parameters the gateway acts on (the rest of a request is ignored)."""

    max_tokens: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    priority: int = 0
    length_hint: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0 or (self.length_hint is not None and self.length_hint < 1):
            raise ValueError("min_tokens must be >= 0 and length_hint >= 1")
        if not (0.0 <= self.temperature and 0.0 < self.top_p <= 1.0) or "" in self.stop:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and non-empty stop strings")


@dataclass(frozen=True, slots=True)
class Delta:
    """New text for the client; the last one carries `finish_reason` (and `error` on failure)."""

    text: str
    finish_reason: FinishReason | None = None
    error: str | None = None


def clamp_interval(
    predicted: tuple[int, int] | None, max_tokens: int, options: Options
) -> tuple[int, int]:
    """[lo, hi] with 1 <= lo <= hi <= max_tokens, widened to contain `length_hint`.

    ignore_eos makes the length exactly max_tokens; with no prediction the hint alone is the
    prediction ([1, max_tokens] without one); lo is raised to min_tokens.
    """
    hint = options.length_hint
    if options.ignore_eos:
        return max_tokens, max_tokens
    lo, hi = (hint, hint) if hint is not None else (1, max_tokens)
    if predicted is not None:
        lo, hi = predicted
        if hint is not None:
            lo, hi = min(lo, hint), max(hi, hint)
    hi = max(1, min(hi, max_tokens))
    lo = max(1, min(options.min_tokens, max_tokens), min(lo, hi))
    return lo, max(hi, lo)


def _reported(described: dict[str, Any], key: str) -> list[int]:
    """Positive values of `key` in each entry of describe()["workers"] (a list of dicts): what
    each worker reports of its KV capacity (`kv_capacity_tokens`) and context (`max_model_len`)."""
    workers = described.get("workers")
    if not isinstance(workers, list):
        return []
    found = (w.get(key) for w in workers if isinstance(w, dict))
    return [c for c in found if isinstance(c, int) and not isinstance(c, bool) and c > 0]


class Gateway:
    """Admission (bounded queue, readiness), validation against the model's limits, and jobs."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        tokenizer: Tokenizer,
        predictor: IntervalPredictor | None,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.tokenizer = tokenizer
        self.online = OnlineFeedback.create(settings, predictor, metrics)
        predictor = self.online.predictor  # the predictor behind online recalibration, if on
        self.batcher = IntervalBatcher(predictor) if predictor is not None else None
        self.metrics = metrics
        self.model_name = settings.model_name
        self.created = int(time.time())
        self.in_flight = 0
        self.kv_capacity_tokens = settings.kv_tokens
        self.max_model_len = settings.max_model_len
        self._draining = False
        self.completion_log = CompletionLog(settings.completion_log, self.model_name)

    async def start(self) -> None:
        """Start the backend; learn the smallest per-worker KV capacity and context length the
        workers report, so that every limit is checked here, before a request is accepted."""
        await self.backend.start()
        described = self.backend.describe()
        reported = _reported(described, "kv_capacity_tokens")
        if reported:
            known = self.kv_capacity_tokens
            self.kv_capacity_tokens = min(reported if known is None else [known, *reported])
        contexts = _reported(described, "max_model_len")
        if contexts:
            self.max_model_len = min(self.max_model_len, *contexts)

    async def stop(self) -> None:
        """Stop accepting (ready -> false), then let the backend drain within the grace period."""
        self._draining = True
        await self.backend.stop(self.settings.shutdown_grace_s)
        self.completion_log.close()
        self.online.close()

    def is_ready(self) -> bool:
        return not self._draining and self.backend.is_ready()

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            message = f"The model `{model}` does not exist."
            raise ApiError(404, message, param="model", code="model_not_found")

    async def submit(self, request_id: str, prompt: str | list[int], options: Options) -> Job:
        """Admit and prepare one request (a text or token-id prompt); raises ApiError (503,
        429, 400) instead."""
        self._admit()
        try:
            token_ids = self._tokenize(prompt) if isinstance(prompt, str) else self._ids(prompt)
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(token_ids)
            request = await self._prepare(request_id, text, token_ids, options)
        except BaseException:
            self.release()
            raise
        return Job(self, request, self.metrics.track(request), text, options)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    def _admit(self) -> None:
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if not self.is_ready():
            self.metrics.observe_rejection("not_ready")
            message = "the server is not ready (starting or shutting down)"
            raise ApiError(503, message, type="server_error", code="not_ready", headers=retry)
        if self.in_flight >= self.settings.max_queue:
            self.metrics.observe_rejection("queue_full")
            message = f"server overloaded: {self.in_flight} requests in flight; retry later"
            raise ApiError(
                429, message, type="rate_limit_error", code="rate_limit_exceeded", headers=retry
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    async def _prepare(
        self, request_id: str, prompt: str, token_ids: list[int], options: Options
    ) -> GenerationRequest:
        arrival_s = time.time()
        max_tokens = self._max_tokens(len(token_ids), options.max_tokens)
        if options.min_tokens > max_tokens:
            message = f"min_tokens ({options.min_tokens}) must be <= max_tokens ({max_tokens})"
            raise ApiError(400, message, param="min_tokens", code="invalid_value")
        predicted = None
        if self.batcher is not None and not options.ignore_eos:
            try:
                predicted = await self.batcher.predict(
                    prompt, len(token_ids), self.model_name, max_tokens
                )
            except (ValueError, UnicodeError):
                logger.warning("predictor failed on request %s", request_id, exc_info=True)
        lo, hi = clamp_interval(predicted, max_tokens, options)
        self.online.note(request_id, predicted, (lo, hi))
        return GenerationRequest(
            request_id=request_id,
            prompt_token_ids=tuple(token_ids),
            max_tokens=max_tokens,
            lo=lo,
            hi=hi,
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            priority=options.priority,
            arrival_s=arrival_s,
            temperature=options.temperature,
            top_p=options.top_p,
            # a request without a seed gets one here, so a replay elsewhere draws the same tokens
            seed=random.getrandbits(63) if options.seed is None else options.seed % 2**63,
        )

    def _tokenize(self, prompt: str) -> list[int]:
        try:
            token_ids = self.tokenizer.encode(prompt)
        except Exception as exc:  # a prompt the tokenizer cannot take is the client's input
            logger.warning("tokenizer rejected a prompt: %s", exc)
            raise ApiError(400, f"prompt could not be tokenized: {exc}", param="prompt") from exc
        if not token_ids:
            raise ApiError(400, "prompt has no tokens", param="prompt", code="invalid_value")
        return token_ids

    def _ids(self, token_ids: list[int]) -> list[int]:
        """A token-id prompt, checked against the tokenizer's vocabulary."""
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            message = f"prompt holds token id {bad}, outside the vocabulary (0 to {vocab - 1})"
            raise ApiError(400, message, param="prompt", code="invalid_value")
        return token_ids

    def _limit(self) -> tuple[int, str]:
        """The most tokens one request may hold, and what sets it."""
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < self.max_model_len:
            return self.kv_capacity_tokens, "KV-cache capacity"
        return self.max_model_len, "maximum context length"

    def check_cap(self, param: str, value: int | None) -> None:
        """400 for an output cap that cannot fit even after a one-token prompt (a chat
        request's `max_tokens` when `max_completion_tokens` wins over it)."""
        limit, what = self._limit()
        if value is not None and value > limit - 1:
            self.metrics.observe_rejection("context_length")
            message = f"{param} ({value}) leaves no room for a prompt: the {what} is {limit}"
            raise ApiError(400, message, param=param, code="context_length_exceeded")

    def _max_tokens(self, num_prompt_tokens: int, requested: int | None) -> int:
        """max_tokens (default: all the room left), or 400 when prompt + it exceeds the limits."""
        limit, what = self._limit()
        room = limit - num_prompt_tokens
        max_tokens = room if requested is None else requested
        if room < 1 or max_tokens > room:
            self.metrics.observe_rejection("context_length")
            message = (
                f"This model's {what} is {limit} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, "
                f"{max_tokens} in the completion). Please reduce the prompt or max_tokens."
            )
            raise ApiError(400, message, param="max_tokens", code="context_length_exceeded")
        return max_tokens

    def describe(self) -> dict[str, Any]:
        """backend.describe() plus the gateway's own queue state, for GET /v1/scheduler."""
        info = dict(self.backend.describe())
        info["gateway"] = {
            "model": self.model_name,
            "ready": self.is_ready(),
            "num_in_flight": self.in_flight,
            "max_queue": self.settings.max_queue,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "max_model_len": self.max_model_len,
        }
        return info


class Job:
    """One accepted request on its way through the backend; close it exactly once."""

    def __init__(
        self,
        gateway: Gateway,
        request: GenerationRequest,
        observer: RequestObserver,
        prompt: str,
        options: Options | None = None,
    ) -> None:
        self.request = request
        self.prompt = prompt
        options = options or Options()
        self._stop = StopMatcher(options.stop)
        self._stop_ids = frozenset(options.stop_token_ids)
        self.num_output_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.error_status: int | None = None
        self._gateway = gateway
        self._observer = observer
        self._closed = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    async def deltas(self) -> AsyncIterator[Delta]:
        """The request's text as it arrives; the last Delta has finish_reason set."""
        events = self._gateway.backend.generate(self.request)
        try:
            async for event in events:
                delta = self._absorb(event, time.time())
                if delta is not None:
                    yield delta
                if self.finish_reason is not None:
                    return
            broken = "the backend ended the stream without a finish reason"
            missing = TokenEvent(self.request.request_id, finish_reason="error", error=broken)
            yield self._absorb(missing, time.time()) or Delta("", "error", broken)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _stop_token_index(self, token_ids: tuple[int, ...]) -> int | None:
        """Index in `token_ids` of the first stop token id past min_tokens (None: none)."""
        if not self._stop_ids:
            return None
        for k, token in enumerate(token_ids):
            past_min = self.num_output_tokens + k + 1 > self.request.min_tokens
            if token in self._stop_ids and past_min:
                return k
        return None

    def _absorb(self, event: TokenEvent, now_s: float) -> Delta | None:
        self._observer.on_event(event, now_s)
        reason = event.finish_reason
        text, tokens = event.text, event.token_ids
        stop_at = self._stop_token_index(tokens)
        if stop_at is not None:  # the stop token ends the output; its own text is not returned
            tokens = tokens[:stop_at]
            reason = "stop"
            text = self._gateway.tokenizer.decode(list(tokens)) if tokens else ""
            self.num_output_tokens += 1
        self.num_output_tokens += len(tokens)
        if not text and tokens:
            text = self._gateway.tokenizer.decode(list(tokens))
        text, stopped = self._stop.feed(text)
        if stopped:
            reason = "stop"
        if reason is None:
            return Delta(text) if text else None
        if reason == "stop" and event.finish_reason is None:  # stopped here: free the KV now
            self._gateway.backend.cancel(self.request.request_id)
        elif not stopped:
            text += self._stop.flush()
        self.finish_reason = reason
        if event.finish_reason is not None:
            self.num_output_tokens = max(self.num_output_tokens, event.num_output_tokens)
        self._observer.on_finish(reason, self.num_output_tokens, now_s)
        self._gateway.completion_log.record(self)
        self._gateway.online.finish(self.request.request_id, reason, self.num_output_tokens)
        self.error = (event.error or "generation failed") if reason == "error" else None
        self.error_status = event.http_status if reason == "error" else None
        return Delta(text, reason, self.error)

    def close(self) -> None:
        """Give the slot back; cancel on the backend if the stream did not finish."""
        if self._closed:
            return
        self._closed = True
        self._gateway.online.forget(self.request.request_id)
        try:
            if self.finish_reason is None:
                self._observer.on_finish("abort", self.num_output_tokens, time.time())
                self._gateway.backend.cancel(self.request.request_id)
        except Exception:
            logger.exception("cancelling request %s failed", self.request.request_id)
        finally:
            self._gateway.release()
