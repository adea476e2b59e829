"""How a worker hosts its engine: loading it, building the loop around it, checking requests.

Engines live in `service.engines.<name>` and expose `load_engine(settings, worker_id)` and
`load_tokenizer(settings)`; heavy frameworks (torch) load only inside the worker that uses them.
`TimedExecutor` measures each `execute`, so the worker can report batch-formation time as the
rest of the iteration.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from algorithms import LengthInterval, SchedulingLoop, WaitingRequest, make_batch_former
from algorithms.batch import BatchView
from algorithms.loop import StepResult
from service.engines.base import Engine, Tokenizer
from service.protocol import GenerationRequest
from service.settings import Settings


class TimedExecutor:
    """The loop's executor: `engine.execute`, timed (`last_execute_s`).

    `prefill_only` (a prefill worker): every request ends at its first token; the ones the
    engine did not finish themselves are listed in `handed_over` (of the last iteration).
    """

    def __init__(self, engine: Engine, *, prefill_only: bool = False) -> None:
        self.engine = engine
        self.prefill_only = prefill_only
        self.last_execute_s = 0.0
        self.handed_over: frozenset[int] = frozenset()

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        """The engine's result; on a prefill worker its handed-over requests count as finished
        (with no finish reason: they go on elsewhere)."""
        started = time.perf_counter()
        try:
            result = self.engine.execute(batch, prefill_tokens, produces)
        finally:
            self.last_execute_s = time.perf_counter() - started
        if not self.prefill_only:
            return result
        first = batch.ids[produces & (batch.generated == 0)].tolist()
        self.handed_over = frozenset(first) - frozenset(result.finished)
        return dataclasses.replace(
            result, finished=result.finished + tuple(sorted(self.handed_over))
        )


def load_engine(settings: Settings, worker_id: int) -> tuple[Engine, Tokenizer]:
    """`service.engines.<settings.engine>`: its engine for this worker, and its tokenizer."""
    module: Any = importlib.import_module(f"service.engines.{settings.engine}")
    engine: Engine = module.load_engine(settings, worker_id)
    tokenizer: Tokenizer = module.load_tokenizer(settings)
    return engine, tokenizer


def build_loop(
    settings: Settings, engine: Engine, *, prefill_only: bool = False
) -> tuple[SchedulingLoop, TimedExecutor]:
    """The batch former, predictor-refiner and `SchedulingLoop` that `settings` name."""
    refiner = None
    if settings.predictor != "none":
        from predictors.default import load_predictor  # LightGBM loads only when it is used

        refiner = load_predictor(settings.predictor)
    former = make_batch_former(settings.policy, **settings.policy_params)
    executor = TimedExecutor(engine, prefill_only=prefill_only)
    loop = SchedulingLoop(
        former,
        executor,
        engine.kv_capacity_tokens,
        max_batch_size=settings.max_batch_size,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        refiner=refiner,
        preemption=settings.preemption,
    )
    return loop, executor


def request_problem(request: GenerationRequest, engine: Engine) -> str | None:
    """Why the engine cannot serve `request` (the gateway checks the same), or None."""
    num_prompt = len(request.prompt_token_ids)
    total = num_prompt + request.max_tokens
    if num_prompt < 1:
        return "the prompt is empty"
    if request.max_tokens < 1:
        return f"max_tokens must be >= 1, got {request.max_tokens}"
    if not 1 <= request.lo <= request.hi:
        return f"predicted interval needs 1 <= lo <= hi, got [{request.lo}, {request.hi}]"
    if request.output_offset >= request.max_tokens:
        return f"{request.output_offset} output tokens handed over, max_tokens {request.max_tokens}"
    if total > engine.max_model_len:
        return (
            f"prompt ({num_prompt} tokens) + max_tokens ({request.max_tokens}) exceeds "
            f"max_model_len {engine.max_model_len}"
        )
    if total > engine.kv_capacity_tokens:
        return (
            f"prompt ({num_prompt} tokens) + max_tokens ({request.max_tokens}) exceeds "
            f"the KV capacity of {engine.kv_capacity_tokens} tokens"
        )
    return None


def waiting_request(
    request: GenerationRequest, loop_id: int, *, prefill_only: bool = False
) -> WaitingRequest:
    """The loop's record of `request` (arrival: the gateway's clock, else now).

    On a prefill worker it needs one output token. A request that comes with k output tokens
    (output_offset k: handed over with its KV, or resubmitted after a failover to be prefilled
    again) is resumed at output position k: prompt + k tokens to start with (`resumed` k) and
    k fewer output tokens to come.
    """
    arrival_s = request.arrival_s or time.time()
    if prefill_only:
        return WaitingRequest(
            loop_id, arrival_s, len(request.prompt_token_ids), LengthInterval(1, 1), max_tokens=1
        )
    k = request.output_offset
    interval = LengthInterval(max(1, request.lo - k), max(1, request.hi - k))
    return WaitingRequest(
        loop_id,
        arrival_s,
        len(request.prompt_token_ids) + k,
        interval,
        max_tokens=request.max_tokens - k,
        resumed=k,
    )
