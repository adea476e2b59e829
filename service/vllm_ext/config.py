"""Which batch former `KvschedScheduler` runs: environment variables and an optional JSON file.

Read once when vLLM builds the scheduler (docs/vllm.md, "Configuration"). Precedence: the
file named by KVSCHED_SCHEDULER_CONFIG, then KVSCHED_POLICY / KVSCHED_POLICY_PARAMS on top;
the default policy is `asf`, as for `kvsched serve`. Every error is one line naming its source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from algorithms import make_batch_former, refuse_clairvoyant
from algorithms.protocols import BatchFormer

CONFIG_ENV = "KVSCHED_SCHEDULER_CONFIG"
POLICY_ENV = "KVSCHED_POLICY"
PARAMS_ENV = "KVSCHED_POLICY_PARAMS"
DEFAULT_POLICY = "asf"
_FILE_KEYS = frozenset({"policy", "policy_params"})


class SchedulerConfigError(ValueError):
    """A bad scheduler configuration; the message is one line naming the variable or file."""


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """A policy name from `algorithms.REGISTRY` and its keyword parameters."""

    policy: str = DEFAULT_POLICY
    policy_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            refuse_clairvoyant(self.policy)
        except ValueError as exc:
            raise SchedulerConfigError(str(exc)) from None

    def make_former(self) -> BatchFormer:
        try:
            return make_batch_former(self.policy, **self.policy_params)
        except ValueError as exc:
            raise SchedulerConfigError(str(exc)) from None


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerConfigError(f"{source}: line {exc.lineno}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise SchedulerConfigError(f"{source}: expected a JSON object")
    return value


def _from_file(path: Path) -> dict[str, Any]:
    source = f"{CONFIG_ENV}={path}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchedulerConfigError(f"{source}: cannot read: {exc.strerror}") from None
    data = _json_object(text, source)
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise SchedulerConfigError(
            f"{source}: unknown keys {unknown}; allowed: {sorted(_FILE_KEYS)}"
        )
    if not isinstance(data.get("policy", DEFAULT_POLICY), str):
        raise SchedulerConfigError(f"{source}: 'policy' must be a string")
    if not isinstance(data.get("policy_params", {}), dict):
        raise SchedulerConfigError(f"{source}: 'policy_params' must be an object")
    return data


def load_settings(environ: Mapping[str, str]) -> SchedulerSettings:
    """Settings from `environ` (normally os.environ); raises SchedulerConfigError."""
    data: dict[str, Any] = {}
    if environ.get(CONFIG_ENV):
        data = _from_file(Path(environ[CONFIG_ENV]))
    policy = environ.get(POLICY_ENV) or data.get("policy", DEFAULT_POLICY)
    params = dict(data.get("policy_params", {}))
    if environ.get(PARAMS_ENV):
        params.update(_json_object(environ[PARAMS_ENV], PARAMS_ENV))
    settings = SchedulerSettings(policy, params)
    settings.make_former()  # fail at start on unknown policies or parameters
    return settings
