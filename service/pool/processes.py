"""Worker processes as the pool sees them: spawning one, and the thread that reads them all.

Each worker gets its own inbound `multiprocessing.Queue` and its own outbound pipe. A pipe per
worker (not one shared result queue) is deliberate: a worker SIGKILLed while writing to a
shared queue would leave its lock held and a partial message in it, wedging every worker; a
dead worker's own pipe just ends (EOF). `OutboundReader` waits on every pipe and process
sentinel, so it sees a death at once, after delivering every complete message the worker sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from typing import Any, Final

from service.pool.roles import Role
from service.protocol import GenerationRequest, TokenEvent, WorkerStats
from service.settings import Settings
from service.worker.ipc import Inbound, KVHandover, Shutdown, WorkerReady
from service.worker.worker import worker_main

JOIN_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.1  # how soon the reader notices a new worker (deaths wake it at once)
MAX_MESSAGES_PER_WAKE: Final = 64  # per worker, so one busy worker cannot starve the others
EXIT_DRAIN_S: Final = 0.5  # wait for a dead worker's last messages (its pipe ends at once)

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class WorkerProcess:
    """One spawned worker: the process, its inbound queue and the read end of its pipe."""

    worker_id: int
    process: SpawnProcess
    inbound: Queue[Inbound]
    conn: connection.Connection
    has_exited: bool = False  # set by the reader thread once it reported the exit

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, message: Inbound) -> None:
        """Queue a message for the worker (never blocks: a feeder thread writes it)."""
        self.inbound.put(message)

    def discard(self) -> None:
        """Forget the inbound queue of a dead worker without waiting for its feeder thread."""
        self.inbound.cancel_join_thread()
        self.inbound.close()


def threadsafe(
    loop: asyncio.AbstractEventLoop, handler: Callable[..., None]
) -> Callable[..., None]:
    """`handler`, called from another thread, runs on `loop` (dropped once the loop is closed)."""

    def call(*args: Any) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(handler, *args)

    return call


def spawn_worker(ctx: SpawnContext, settings: Settings, worker_id: int) -> WorkerProcess:
    """Start `service.worker.worker.worker_main` in a fresh (spawned) interpreter."""
    inbound: Queue[Inbound] = ctx.Queue()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=worker_main,
        args=(settings, worker_id, inbound, sender),
        name=f"kvsched-worker-{worker_id}",
        daemon=True,
    )
    process.start()
    sender.close()  # the child holds the only write end now: its death reads as EOF here
    return WorkerProcess(worker_id, process, inbound, receiver)


@dataclass(eq=False)
class OutboundReader:
    """A daemon thread delivering worker messages, then each worker's exit, in order.

    `workers()` lists the current processes (read each wake-up); `on_message(worker, message)`
    and `on_exit(worker)` are called from this thread and must hand over to the event loop
    (call_soon_threadsafe). `on_exit` comes after the last message of that worker.
    """

    workers: Callable[[], Sequence[WorkerProcess]]
    on_message: Callable[[WorkerProcess, Any], None]
    on_exit: Callable[[WorkerProcess], None]
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvsched-pool-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            handles: dict[Any, WorkerProcess] = {}
            for worker in self.workers():
                if not worker.has_exited:
                    handles[worker.conn] = worker
                    handles[worker.process.sentinel] = worker
            if not handles:
                self._stop.wait(POLL_S)
                continue
            for handle in connection.wait(list(handles), timeout=POLL_S):
                worker = handles[handle]
                if not worker.has_exited:
                    self._drain(worker, exited=handle is not worker.conn)

    def _drain(self, worker: WorkerProcess, *, exited: bool) -> None:
        """Deliver what `worker` sent; once it exited (or its pipe ended), report the exit."""
        try:
            for count in itertools.count():
                if not exited and count >= MAX_MESSAGES_PER_WAKE:
                    return
                if not worker.conn.poll(EXIT_DRAIN_S if exited else 0):
                    if not exited:
                        return
                    break  # exited, yet its pipe neither ends nor has data: give up on it
                self.on_message(worker, worker.conn.recv())  # EOFError: it sent everything
        except (EOFError, OSError):
            pass
        worker.has_exited = True
        worker.process.join(1.0)
        worker.conn.close()
        logger.info("worker %d (pid %s) exited", worker.worker_id, worker.pid)
        self.on_exit(worker)


@dataclass(eq=False, slots=True)
class WorkerSlot:
    """One worker position of the pool: its current process and what the pool knows of it."""

    worker_id: int
    role: Role = "mixed"
    proc: WorkerProcess | None = None  # None: given up (or shut down)
    ready: WorkerReady | None = None  # None until the current process reported ready
    stats: WorkerStats | None = None
    load_tokens: int = 0  # projected KV tokens: prompt + hi over its unfinished requests
    num_assigned: int = 0
    restarts: int = 0
    start_failures: int = 0  # consecutive deaths before reporting ready
    last_error: str | None = None
    last_heard_s: float = 0.0  # time.monotonic() of its last message, or of work arriving idle


def stalled_slots(slots: Sequence[WorkerSlot], timeout_s: float) -> list[WorkerSlot]:
    """Ready workers holding requests that have sent nothing for `timeout_s` (hung, not dead).

    A busy worker reports every iteration; an iteration longer than `timeout_s` reads as a hang.
    """
    now = time.monotonic()
    return [
        slot
        for slot in slots
        if slot.proc is not None
        and not slot.proc.has_exited
        and slot.ready is not None
        and slot.num_assigned > 0
        and now - slot.last_heard_s > timeout_s
    ]


async def kill_stalled_workers(slots: Sequence[WorkerSlot], timeout_s: float) -> None:
    """Forever: SIGKILL each stalled worker; the pool's exit path restarts it and re-routes."""
    while True:
        await asyncio.sleep(min(1.0, timeout_s / 4))
        for slot in stalled_slots(slots, timeout_s):
            assert slot.proc is not None
            slot.last_error = (
                f"it sent nothing for {timeout_s:g} s while holding requests (hung), so it was"
                " killed (--worker-stall-timeout-s)"
            )
            logger.error("worker %d: %s", slot.worker_id, slot.last_error)
            slot.last_heard_s = time.monotonic()  # once: its exit arrives through the reader
            slot.proc.process.kill()


@dataclass(eq=False, slots=True)
class PendingRequest:
    """An accepted request the pool tracks until its final event.

    `tokens` holds every token streamed to the client so far: after a worker death the request
    resumes from them elsewhere (`resume`), so the client's stream goes on where it stopped.
    """

    request: GenerationRequest
    stage: Role = "mixed"  # the role of worker it needs now
    slot: WorkerSlot | None = None  # the worker it was sent to
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    tokens: list[int] = field(default_factory=list)  # streamed to the client
    num_resubmits: int = 0
    handed_tokens: tuple[int, ...] = ()  # output of its prefill worker (stage "decode")
    resumed_tokens: tuple[int, ...] = ()  # output it resumes from without KV (failover)
    kv: KVHandover | None = None  # its prefill worker's KV cache, until sent on
    kv_sent: bool = False  # that KV went to a decode worker (and dies with it)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def weight(self) -> int:
        """Projected KV load on its worker: prompt + 1 to prefill, else prompt + hi."""
        output = 1 if self.stage == "prefill" else self.request.hi
        return len(self.request.prompt_token_ids) + output

    def resume(self, stage: Role) -> None:
        """Its worker died: go on from the tokens streamed so far, on a worker of `stage` (a
        hand-over's KV is gone with it, so those tokens are prefilled again too)."""
        if len(self.tokens) > len(self.handed_tokens) or self.kv_sent:
            self.resumed_tokens = tuple(self.tokens)
            self.handed_tokens = ()
            self.stage = stage
            self.kv = None
            self.kv_sent = False

    def take_kv(self) -> KVHandover | None:
        """The KV to send with its next `Submit` (once: the pool keeps no copy)."""
        kv, self.kv = self.kv, None
        self.kv_sent = self.kv_sent or kv is not None
        return kv

    def stage_request(self) -> GenerationRequest:
        """What its worker is sent: the request, with the output it continues from if any."""
        if self.resumed_tokens:
            return dataclasses.replace(
                self.request, output_token_ids=self.resumed_tokens, recompute=True
            )
        if self.handed_tokens:
            return dataclasses.replace(self.request, output_token_ids=self.handed_tokens)
        return self.request


def join_all(procs: Sequence[WorkerProcess], timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Wait up to `timeout_s` in all for the processes to end; kill the ones still running.

    Waits on sentinels only: reaping (waitpid) stays with the reader thread while it runs, as
    two threads reaping one child race (the loser sees it as still alive).
    """
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        left_s = max(0.0, deadline - time.monotonic())
        if not connection.wait([proc.process.sentinel], left_s):
            logger.warning("worker %d did not exit in time; killing it", proc.worker_id)
            proc.process.kill()
            connection.wait([proc.process.sentinel], JOIN_TIMEOUT_S)
        proc.discard()


async def shutdown_workers(slots: Sequence[WorkerSlot], reader: OutboundReader | None) -> None:
    """Ask every live worker to exit, wait (off the event loop), kill stragglers, stop `reader`."""
    procs = [slot.proc for slot in slots if slot.proc is not None]
    for proc in procs:
        with contextlib.suppress(ValueError, OSError):  # its queue is already closed
            proc.send(Shutdown())
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, join_all, procs)
    if reader is not None:
        await loop.run_in_executor(None, reader.stop)
    for proc in procs:
        proc.process.join(0.1)  # reap; the reader has stopped, so no other thread does
    for slot in slots:
        slot.proc = None
        slot.ready = None


def describe_slot(slot: WorkerSlot) -> dict[str, Any]:
    stats, proc = slot.stats, slot.proc
    kv_tokens = stats.kv_tokens if stats else 0
    capacity = (
        stats.kv_capacity_tokens if stats else (slot.ready.kv_capacity_tokens if slot.ready else 0)
    )
    return {
        "worker_id": slot.worker_id,
        "role": slot.role,
        "pid": proc.pid if proc else None,
        "alive": proc is not None and not proc.has_exited,
        "ready": slot.ready is not None,
        "restarts": slot.restarts,
        "num_assigned": slot.num_assigned,
        "projected_kv_tokens": slot.load_tokens,
        "num_running": stats.num_running if stats else 0,
        "num_waiting": stats.num_waiting if stats else 0,
        "kv_tokens": kv_tokens,
        "kv_capacity_tokens": capacity,
        "kv_usage": kv_tokens / capacity if capacity else 0.0,
        # the engine's own context limit (an hf model's position limit): the gateway enforces it
        "max_model_len": slot.ready.max_model_len if slot.ready else None,
    }


def describe_slots(slots: Sequence[WorkerSlot]) -> dict[str, Any]:
    """Totals over the workers, and each worker's state (for GET /v1/scheduler)."""
    workers = [describe_slot(slot) for slot in slots]
    keys = ("num_running", "num_waiting", "kv_tokens", "kv_capacity_tokens")
    totals: dict[str, Any] = {key: sum(w[key] for w in workers) for key in keys}
    capacity = totals["kv_capacity_tokens"]
    totals["kv_usage"] = totals["kv_tokens"] / capacity if capacity else 0.0
    return {**totals, "workers": workers}
