"""Worker roles (issue 6, WAA serving): "mixed" runs whole requests, "prefill" only prompts and
first tokens, "decode" the rest of requests handed over with their KV.

Workers 0..prefill_workers-1 prefill and the others decode; with `prefill_workers` 0 every
worker is mixed (the default). A request in a role pool goes to the least-loaded prefill worker,
and after its first token to the decode worker with the least projected KV. Invariant: a role
is a pure function of (settings, worker_id), so a restarted worker keeps its slot's role.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

from service.protocol import WorkerStats
from service.settings import Settings

if TYPE_CHECKING:  # workers import this module: no prometheus_client at run time
    from service.metrics import Metrics

Role = Literal["mixed", "prefill", "decode"]
ROLES: Final[tuple[Role, ...]] = ("mixed", "prefill", "decode")


class RoleSlot(Protocol):
    """What roles read of a worker slot (the pool's `WorkerSlot` is one)."""

    @property
    def worker_id(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def proc(self) -> object | None: ...
    @property
    def ready(self) -> object | None: ...
    @property
    def load_tokens(self) -> int: ...


SlotT = TypeVar("SlotT", bound=RoleSlot)


def worker_role(settings: Settings, worker_id: int) -> Role:
    """The role of worker `worker_id` under `settings`."""
    if not settings.prefill_workers:
        return "mixed"
    return "prefill" if worker_id < settings.prefill_workers else "decode"


def first_role(settings: Settings) -> Role:
    """Where a new request goes first: a prefill worker in a role pool, else a mixed one."""
    return "prefill" if settings.prefill_workers else "mixed"


def role_settings(settings: Settings, role: Role) -> Settings:
    """`settings` as a worker of `role` sees them: prefill workers use their own batch limits."""
    if role != "prefill":
        return settings
    update: dict[str, int] = {}
    if settings.prefill_max_batch_size is not None:
        update["max_batch_size"] = settings.prefill_max_batch_size
    if settings.prefill_max_num_batched_tokens is not None:
        update["max_num_batched_tokens"] = settings.prefill_max_num_batched_tokens
    return settings.model_copy(update=update) if update else settings


def pick_slot(slots: Sequence[SlotT], role: Role) -> SlotT | None:
    """The live worker of `role` with the least projected load (ready ones first), or None."""
    live = [slot for slot in slots if slot.proc is not None and slot.role == role]
    if not live:
        return None
    return min(live, key=lambda s: (s.ready is None, s.load_tokens, s.worker_id))


class RoleMetrics:
    """`kvsched:worker_role{worker, role}` (1 per worker) and `kvsched:kv_handover_tokens`,
    added to the app's `Metrics` registry (no metrics: nothing is recorded)."""

    def __init__(self, metrics: Metrics | None, slots: Sequence[RoleSlot]) -> None:
        self._model = metrics.model_name if metrics is not None else ""
        self._handover = None
        if metrics is None:
            return
        registry = metrics.registry
        from prometheus_client import Counter, Gauge

        role = Gauge(
            "kvsched:worker_role",
            "1 for each worker, labelled with its role (mixed, prefill, decode)",
            ("model_name", "worker", "role"),
            registry=registry,
        )
        for slot in slots:
            role.labels(self._model, str(slot.worker_id), slot.role).set(1)
        self._handover = Counter(
            "kvsched:kv_handover_tokens",
            "KV tokens a decode worker received from prefill workers instead of prefilling",
            ("model_name", "worker"),
            registry=registry,
        )

    def observe(self, stats: WorkerStats) -> None:
        if self._handover is not None and stats.handover_tokens:
            self._handover.labels(self._model, str(stats.worker_id)).inc(stats.handover_tokens)
