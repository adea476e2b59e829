"""The `sim` engine: a simulated GPU that runs the loop's batches in real time (issue 4).

Each iteration lasts the simulator's cost-model time divided by `settings.speedup`, and every
running request emits a deterministic placeholder token. A request's output length is a
function of the request alone (`output_length`: settings.seed, its id, max_tokens, min_tokens,
ignore_eos), never of the worker: `max_tokens` under `ignore_eos`, else a draw from a trace's
lengths or a log-normal, clipped to [max(min_tokens, 1), max_tokens]. The token at output
position p is a function of (seed, request id, p). Invariant: a request that is resumed (a row
with `resumed` k: after a resume preemption, a failover resubmission elsewhere, or a hand-over)
continues at output position k + generated and stops at the same total; one restarted
regenerates exactly the same tokens. A request handed over from a prefill worker with its KV
(`output_offset` k, not `recompute`) gets its KV by transfer (`handover_delay_s`: prompt + k
tokens x kv_transfer_ms_per_token, the worker waits for it off the iteration clock) and its
admission costs a decode step here, no prefill compute; a resubmitted one (`recompute`) is
prefilled here like any other.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import zlib
from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.loop import StepResult
from service.protocol import GenerationRequest
from service.settings import Settings
from simulator.cost_model import CostModel, load_cost_model
from simulator.executor import iteration_time_s
from simulator.exegpt.config import ClusterSpec
from simulator.traces import load_trace

VOCAB_SIZE: Final = 32_000
BOS_TOKEN_ID: Final = 1
EOS_TOKEN_ID: Final = 2
FIRST_WORD_ID: Final = 3  # ids below are specials (0 pad, 1 bos, 2 eos) and decode to ""
DEFAULT_MEDIAN_TOKENS: Final = 200  # log-normal default when no trace is given
DEFAULT_SIGMA: Final = 1.0
_PIECES: Final = re.compile(r"\w+|[^\w\s]")
_WORDS: Final = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco "
    "laboris nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate "
    "velit esse cillum eu fugiat nulla pariatur excepteur sint occaecat cupidatat non proident "
    "sunt culpa qui officia deserunt mollit anim id est laborum"
).split()


class SimTokenizer:
    """Deterministic word/punctuation tokenizer: every process maps the same text to the same ids.

    `encode` splits on `\\w+|[^\\w\\s]` and maps each piece to FIRST_WORD_ID + crc32(piece) mod
    (VOCAB_SIZE - FIRST_WORD_ID); it is not invertible, so `decode` renders each non-special id
    as " " + a lorem-ipsum word chosen by the id (placeholder text) and specials as "".
    """

    vocab_size: int = VOCAB_SIZE
    bos_token_id: int = BOS_TOKEN_ID
    eos_token_id: int | None = EOS_TOKEN_ID

    def encode(self, text: str) -> list[int]:
        span = VOCAB_SIZE - FIRST_WORD_ID
        return [FIRST_WORD_ID + zlib.crc32(p.encode()) % span for p in _PIECES.findall(text)]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(" " + _WORDS[t % len(_WORDS)] for t in token_ids if t >= FIRST_WORD_ID)


def load_tokenizer(settings: Settings) -> SimTokenizer:
    """The sim engine's tokenizer (the same for every setting)."""
    del settings
    return SimTokenizer()


def request_seed(seed: int, request_id: str) -> int:
    """A stable 63-bit seed for one request (the same in every process and on every run)."""
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def placeholder_tokens(seeds: NDArray[np.int64], positions: NDArray[np.int64]) -> NDArray[np.int64]:
    """Token id at output position `positions[j]` of the request seeded `seeds[j]` (never EOS)."""
    span = VOCAB_SIZE - FIRST_WORD_ID
    return FIRST_WORD_ID + (seeds % span + positions * 7919) % span


def output_length(
    request: GenerationRequest, seed: int, lengths: NDArray[np.int64] | None = None
) -> int:
    """The request's output length: see the module docstring."""
    if request.ignore_eos:
        return request.max_tokens
    rng = np.random.default_rng(request_seed(seed, request.request_id))
    if lengths is not None:
        drawn = int(lengths[rng.integers(len(lengths))])
    else:
        drawn = round(float(rng.lognormal(math.log(DEFAULT_MEDIAN_TOKENS), DEFAULT_SIGMA)))
    return min(max(drawn, request.min_tokens, 1), request.max_tokens)


class SimEngine:
    """Implements `Engine`: cost-model pacing, placeholder tokens, lengths from `output_length`.

    `sleep`/`clock` are injectable for tests. Iterations are paced against a deadline, so the
    worker's own overhead (up to one iteration) is absorbed into the sleep, not added to it.
    """

    name: str = "sim"

    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.worker_id = worker_id
        self.cost_model: CostModel = load_cost_model(
            settings.cost_model, kv_tokens=settings.kv_tokens
        )
        self.kv_capacity_tokens = self.cost_model.kv_capacity_tokens
        self.max_model_len = settings.max_model_len
        self.speedup = settings.speedup
        self.seed = settings.seed
        self.lengths: NDArray[np.int64] | None = None
        if settings.sim_output_lengths is not None:
            self.lengths = load_trace(settings.sim_output_lengths).output_tokens
        transfer_ms = settings.kv_transfer_ms_per_token
        if transfer_ms is None:
            transfer_ms = ClusterSpec(1).kv_transfer_ms_per_token
        self.kv_transfer_s_per_token = transfer_ms / 1000.0
        self.handover_s = 0.0  # model seconds of KV hand-over transfers so far
        self._sleep = sleep
        self._clock = clock
        self._deadline = 0.0
        self._targets: dict[int, int] = {}
        self._seeds: dict[int, int] = {}
        self._stops: dict[int, bool] = {}  # True: ends with EOS ("stop"), False: "length"
        self._handover: set[int] = set()  # its KV arrives by transfer (until it is evicted)

    def add(self, loop_id: int, request: GenerationRequest) -> None:
        target = output_length(request, self.seed, self.lengths)
        self._targets[loop_id] = target
        self._seeds[loop_id] = request_seed(self.seed, request.request_id)
        self._stops[loop_id] = target < request.max_tokens
        if request.output_offset and not request.recompute:
            self._handover.add(loop_id)

    def handover_delay_s(self, num_kv_tokens: int) -> float:
        """Wall seconds the KV of a hand-over takes to arrive (model time / speedup)."""
        model_s = num_kv_tokens * self.kv_transfer_s_per_token
        self.handover_s += model_s
        return model_s / self.speedup

    def iteration_s(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> float:
        """Model seconds of one iteration; a hand-over's KV is here already (no prefill)."""
        handover = np.zeros(len(batch), dtype=np.bool_)
        if self._handover:
            handover = np.fromiter((i in self._handover for i in batch.ids.tolist()), np.bool_)
        return iteration_time_s(self.cost_model, batch, prefill_tokens, produces, handover)

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        """Every producing row emits its placeholder token; a row at its length finishes, with
        EOS ("stop") or at max_tokens ("length")."""
        elapsed_s = self.iteration_s(batch, prefill_tokens, produces) / self.speedup
        ids = batch.ids[produces]
        positions = batch.resumed[produces] + batch.generated[produces]
        targets = np.fromiter((self._targets[int(i)] for i in ids), np.int64, len(ids))
        seeds = np.fromiter((self._seeds[int(i)] for i in ids), np.int64, len(ids))
        stops = np.fromiter((self._stops[int(i)] for i in ids), np.bool_, len(ids))
        done = positions + 1 >= targets
        tokens = np.where(done & stops, EOS_TOKEN_ID, placeholder_tokens(seeds, positions))
        finished = tuple(ids[done].tolist())
        reasons = {i: "stop" if self._stops[i] else "length" for i in finished}
        self._pace(elapsed_s)
        return StepResult(
            elapsed_s, finished, dict(zip(ids.tolist(), tokens.tolist(), strict=True)), reasons
        )

    def _pace(self, elapsed_s: float) -> None:
        """Sleep until this iteration's end: the previous end + `elapsed_s`, so the worker's
        overhead since then is hidden (as on a GPU running ahead of its CPU), unless the
        worker is later than one iteration (it was idle or slow): then from now."""
        now = self._clock()
        start = self._deadline if now - self._deadline <= elapsed_s else now
        self._deadline = start + elapsed_s
        if self._deadline > now:
            self._sleep(self._deadline - now)

    def release(self, loop_id: int, *, forget: bool) -> None:
        """Nothing to free on a simulated GPU; `forget` drops the request's fixed length. An
        evicted hand-over lost its transferred KV: its next prefill is computed here."""
        self._handover.discard(loop_id)
        if forget:
            for table in (self._targets, self._seeds, self._stops):
                table.pop(loop_id, None)


def load_engine(settings: Settings, worker_id: int) -> SimEngine:
    """The worker's engine factory (service.worker.engine_host.load_engine)."""
    return SimEngine(settings, worker_id)
