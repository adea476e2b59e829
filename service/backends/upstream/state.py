"""One upstream server's state: what its /metrics reported and what we have sent it.

`parse_load` reads vLLM's gauges (docs/serving-upstream.md, "Routing by load":
`vllm:kv_cache_usage_perc` averaged over its engines, `vllm:num_requests_waiting` / `_running`
summed) or SGLang's (`sglang:token_usage`, `sglang:num_queue_reqs`, `sglang:num_running_reqs`).
Invariant of `Upstream`: `projected_tokens` and `used_tokens` are sums over exactly the requests
admitted to it and not yet released.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

KV_USAGE_NAMES: Final = ("vllm:kv_cache_usage_perc", "sglang:token_usage")
WAITING_NAMES: Final = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
RUNNING_NAMES: Final = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING_PER_FULL_KV: Final = 16  # load: this many waiting requests weigh as much as a full KV
UNKNOWN_CAPACITY_WATERMARK: Final = 0.9  # capacity not known yet: admit below this KV usage
MIN_LEARNING_USAGE: Final = 0.05  # learn capacity only from usage readings at least this high
LEARNING_RATE: Final = 0.25  # weight of a new capacity sample in the running estimate


@dataclass(frozen=True, slots=True)
class ReportedLoad:
    """An upstream's own gauges from its last /metrics (None: it does not export that one)."""

    kv_usage: float | None = None
    num_waiting: int | None = None
    num_running: int | None = None

    def __post_init__(self) -> None:
        if self.kv_usage is not None and not 0.0 <= self.kv_usage <= 1.0:
            raise ValueError(f"kv_usage must be in [0, 1], got {self.kv_usage}")
        if min(self.num_waiting or 0, self.num_running or 0) < 0:
            raise ValueError("request counts must be >= 0")


def parse_load(text: str) -> ReportedLoad:
    """The load gauges in a Prometheus exposition; ValueError if the text does not parse."""
    samples: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):  # NaN / +-Inf say nothing about the load
                samples.setdefault(sample.name, []).append(float(sample.value))

    def first(names: tuple[str, ...]) -> list[float] | None:
        return next((samples[name] for name in names if samples.get(name)), None)

    usage, waiting, running = first(KV_USAGE_NAMES), first(WAITING_NAMES), first(RUNNING_NAMES)
    return ReportedLoad(
        kv_usage=None if usage is None else min(1.0, max(0.0, sum(usage) / len(usage))),
        num_waiting=None if waiting is None else max(0, round(sum(waiting))),
        num_running=None if running is None else max(0, round(sum(running))),
    )


class Upstream:
    """One OpenAI-compatible server behind the gateway, and our books on it."""

    def __init__(self, index: int, url: str, capacity_tokens: int | None, max_in_flight: int):
        self.index, self.url = index, url.rstrip("/")
        self.configured_capacity = capacity_tokens
        self.learned_capacity: float | None = None
        self.max_in_flight = max_in_flight
        self.reachable = False
        self.last_error: str | None = None
        self.reported = ReportedLoad()
        self.model: str | None = None
        self.max_model_len: int | None = None  # from its /v1/models (vLLM reports it)
        self.projected_tokens = 0  # sum of prompt + hi over in-flight requests
        self.used_tokens = 0  # sum of prompt + tokens generated so far over in-flight requests
        self.num_in_flight = 0
        self.num_served = 0
        self.num_failed = 0
        self.unreported_prompt_tokens = 0  # counters not yet sent to Metrics.observe_worker
        self.unreported_generation_tokens = 0

    def admit(self, weight_tokens: int, prompt_tokens: int) -> None:
        self.num_in_flight += 1
        self.projected_tokens += weight_tokens
        self.used_tokens += prompt_tokens
        self.unreported_prompt_tokens += prompt_tokens

    def generated(self, num_tokens: int) -> None:
        self.used_tokens += num_tokens
        self.unreported_generation_tokens += num_tokens

    def release(self, weight_tokens: int, used_tokens: int) -> None:
        self.num_in_flight -= 1
        self.projected_tokens -= weight_tokens
        self.used_tokens -= used_tokens

    @property
    def capacity_tokens(self) -> int | None:
        if self.configured_capacity is not None:
            return self.configured_capacity
        return None if self.learned_capacity is None else int(self.learned_capacity)

    def takes_another(self) -> bool:
        """While its capacity is unknown: may one more request be sent here now?

        An idle reachable upstream takes anything; otherwise it needs fewer than
        `max_in_flight` requests and a reported KV usage below the watermark. With a known
        capacity the batch former decides instead (service.backends.upstream.scheduler).
        """
        if not self.reachable:
            return False
        if self.num_in_flight == 0:
            return True
        usage = self.reported.kv_usage or 0.0
        return self.num_in_flight < self.max_in_flight and usage < UNKNOWN_CAPACITY_WATERMARK

    def load(self) -> float:
        """max(our projected KV fraction, its reported KV usage) + waiting / WAITING_PER_FULL_KV."""
        capacity = self.capacity_tokens
        projected = self.projected_tokens / capacity if capacity else 0.0
        usage = max(projected, self.reported.kv_usage or 0.0)
        return usage + (self.reported.num_waiting or 0) / WAITING_PER_FULL_KV

    def learn_capacity(self) -> None:
        """Estimate capacity = our tokens on it / its reported KV usage (running average).

        Assumes we are its only client: other clients' tokens make the estimate smaller, which
        errs on the side of admitting less. Never overrides --upstream-kv-tokens.
        """
        usage = self.reported.kv_usage
        if self.configured_capacity is not None or usage is None or self.used_tokens <= 0:
            return
        if usage < MIN_LEARNING_USAGE:
            return
        sample = self.used_tokens / usage
        old = self.learned_capacity
        self.learned_capacity = sample if old is None else old + LEARNING_RATE * (sample - old)

    def mark_down(self, reason: str) -> None:
        self.reachable, self.last_error = False, reason

    def _capacity_source(self) -> str:
        if self.configured_capacity is not None:
            return "configured"
        return "unknown" if self.learned_capacity is None else "learned"

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "reachable": self.reachable,
            "last_error": self.last_error,
            "model": self.model,
            "num_in_flight": self.num_in_flight,
            "projected_kv_tokens": self.projected_tokens,
            "used_kv_tokens": self.used_tokens,
            "kv_capacity_tokens": self.capacity_tokens,
            "capacity_source": self._capacity_source(),
            "reported_kv_usage": self.reported.kv_usage,
            "reported_num_waiting": self.reported.num_waiting,
            "reported_num_running": self.reported.num_running,
            "load": round(self.load(), 4),
            "num_served": self.num_served,
            "num_failed": self.num_failed,
        }
