"""Serving a `kvsched plan --json` file: its "serve" section as `Settings` fields (issue 6).

The sim engine runs one cost-model device per worker process, so a plan entry of `count`
replicas x `devices` devices becomes count x devices workers, each with the entry's batch limits
split over its devices (ceil(limit / devices)): a g-device pipeline is served as g data-parallel
workers, and a TP group as TP-1 workers (logged). Invariant: a file that is not a plan, or a plan
this server cannot run, raises ValueError naming the file; nothing is guessed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from simulator.cost_model import PRESETS

MAX_WORKERS: Final = 64  # Settings.workers' bound
LAYOUTS: Final = (("mixed",), ("prefill", "decode"))  # RRA, WAA

logger = logging.getLogger(__name__)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class PlanWorkers:
    """One entry of the plan's "serve.workers": `count` replicas of `devices` devices each."""

    role: str
    count: int
    devices: int
    max_batch_size: int
    max_num_batched_tokens: int | None = None
    tp_degree: int = 1

    def __post_init__(self) -> None:
        for name in ("count", "devices", "max_batch_size", "tp_degree"):
            if not _whole(getattr(self, name)):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        tokens = self.max_num_batched_tokens
        if tokens is not None and not _whole(tokens):
            raise ValueError(f"max_num_batched_tokens must be an integer >= 1, got {tokens!r}")

    @classmethod
    def of(cls, entry: object) -> PlanWorkers:
        if not isinstance(entry, dict):
            raise ValueError(f"expected an object, got {type(entry).__name__}")
        required = ("role", "count", "devices", "max_batch_size")
        missing = [key for key in required if key not in entry]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(
            str(entry["role"]),
            entry["count"],
            entry["devices"],
            entry["max_batch_size"],
            entry.get("max_num_batched_tokens"),
            entry.get("tp_degree", 1),
        )

    @property
    def num_workers(self) -> int:
        return self.count * self.devices

    def per_worker(self, limit: int) -> int:
        return math.ceil(limit / self.devices)


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"plan {path}: cannot read it ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else exc
        raise ValueError(f"plan {path}: not JSON ({where})") from None
    if not isinstance(document, dict):
        raise ValueError(f"plan {path}: not a plan (expected a JSON object from `kvsched plan`)")
    return document


def read_plan(path: Path) -> tuple[dict[str, Any], tuple[PlanWorkers, ...]]:
    """The plan document and its worker entries, checked (ValueError naming `path`)."""
    document = _read(path)
    serve = document.get("serve")
    if not isinstance(serve, dict) or not isinstance(serve.get("workers"), list):
        raise ValueError(
            f'plan {path}: no "serve" section with a "workers" list (write plans with '
            "`kvsched plan --json FILE`)"
        )
    entries = []
    for index, entry in enumerate(serve["workers"]):
        try:
            entries.append(PlanWorkers.of(entry))
        except ValueError as exc:
            raise ValueError(f"plan {path}: serve.workers[{index}]: {exc}") from None
    roles = tuple(entry.role for entry in entries)
    if roles not in LAYOUTS:
        raise ValueError(
            f"plan {path}: serve.workers has roles {list(roles)}; expected ['mixed'] (RRA) or "
            "['prefill', 'decode'] (WAA)"
        )
    total = sum(entry.num_workers for entry in entries)
    if total > MAX_WORKERS:
        raise ValueError(f"plan {path}: {total} workers, more than the {MAX_WORKERS} allowed")
    return document, tuple(entries)


def plan_settings(path: Path, given: Collection[str] = ()) -> dict[str, Any]:
    """`Settings` fields from the plan at `path`, leaving out the names in `given`."""
    document, entries = read_plan(path)
    serve = document["serve"]
    by_role = {entry.role: entry for entry in entries}
    main = by_role.get("mixed") or by_role["decode"]
    fields: dict[str, Any] = {
        "workers": sum(entry.num_workers for entry in entries),
        "max_batch_size": main.per_worker(main.max_batch_size),
        "prefill_workers": 0,
    }
    prefill = by_role.get("prefill")
    if prefill is not None:
        fields["prefill_workers"] = prefill.num_workers
        fields["prefill_max_batch_size"] = prefill.per_worker(prefill.max_batch_size)
        if prefill.max_num_batched_tokens is not None:
            tokens = prefill.per_worker(prefill.max_num_batched_tokens)
            fields["prefill_max_num_batched_tokens"] = tokens
    if isinstance(serve.get("engine"), str):
        fields["engine"] = serve["engine"]
    cluster = document.get("cluster")
    transfer = cluster.get("kv_transfer_ms_per_token") if isinstance(cluster, dict) else None
    if isinstance(transfer, int | float) and not isinstance(transfer, bool):
        fields["kv_transfer_ms_per_token"] = float(transfer)
    if "cost_model" not in given:
        fields["cost_model"] = _cost_model(path, serve.get("cost_model"))
    for entry in entries:
        if entry.tp_degree > 1:
            logger.warning(
                "plan %s: %s workers use TP degree %d; the sim engine runs every device as its "
                "own TP-1 worker",
                path, entry.role, entry.tp_degree,
            )  # fmt: skip
    return {name: value for name, value in fields.items() if name not in given}


def _cost_model(path: Path, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f'plan {path}: serve has no "cost_model"; give --cost-model')
    if name not in PRESETS and not Path(name).is_file():
        raise ValueError(
            f"plan {path}: cost model {name!r} is neither a preset ({', '.join(sorted(PRESETS))})"
            " nor a file here; give --cost-model PROFILE"
        )
    return name
