"""Prometheus metrics of one app: vLLM's names under the `kvsched:` prefix, plus ours
(docs/serving.md, "Metrics").

Each `Metrics` owns its own CollectorRegistry (never the global one), so several apps can live
in one process. Two feeds update it: the gateway, per request, through `track()` (latency
histograms, outcomes, interval misses), and the worker pool through `observe_worker()` (gauges,
token and eviction counters, batch-formation time). Workers never touch Prometheus themselves.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.protocol import GenerationRequest, TokenEvent, WorkerStats

PREFIX: Final = "kvsched:"
REJECTION_REASONS: Final = ("queue_full", "not_ready", "context_length")
FINISH_REASONS: Final = ("stop", "length", "abort", "error")
# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                       2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                      5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS: Final = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                          50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
FORMATION_BUCKETS: Final = (1e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                            1e-2, 2.5e-2, 0.1)  # fmt: skip
HANDOVER_BUCKETS: Final = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
                            0.5, 1.0, 2.5)  # fmt: skip
WIDTH_BUCKETS: Final = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    """The app's metrics; `render()` is the /metrics body.

    Pool contract: the gateway builds one `Metrics` and hands it to the pool
    (`WorkerPool(settings, metrics=metrics)`); the pool calls `observe_worker(stats, policy)`
    for every `WorkerStats` a worker reports, and `forget_worker(worker_id)` when a worker is
    gone for good or replaced, so its gauges do not linger. Per-request metrics (TTFT, ITL,
    E2E, queue time, outcomes, interval misses) are the gateway's job; the pool must not
    count them.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._worker_gauges()
        self._worker_counters()
        self._request_histograms()
        self._request_counters()
        self.in_flight = self._gauge(
            "gateway_requests_in_flight", "Requests accepted by the gateway and not finished"
        ).labels(model_name)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        names = ("model_name", *labels)
        return Gauge(PREFIX + name, doc, names, registry=self.registry)

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        names = ("model_name", *labels)
        return Counter(PREFIX + name, doc, names, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        names = ("model_name", *labels)
        return Histogram(PREFIX + name, doc, names, registry=self.registry, buckets=buckets)

    def _worker_gauges(self) -> None:
        self.num_requests_running = self._gauge(
            "num_requests_running", "Requests in the worker's running batch", "worker"
        )
        self.num_requests_waiting = self._gauge(
            "num_requests_waiting", "Requests queued in the worker, not yet admitted", "worker"
        )
        self.kv_cache_usage_perc = self._gauge(
            "kv_cache_usage_perc", "KV-cache usage, 0..1 (1 = full)", "worker"
        )

    def _worker_counters(self) -> None:
        self.num_preemptions = self._counter(
            "num_preemptions", "Preemptions (evictions) in the worker", "worker"
        )
        self.prompt_tokens = self._counter("prompt_tokens", "Prefill tokens processed", "worker")
        self.generation_tokens = self._counter(
            "generation_tokens", "Generation tokens processed", "worker"
        )
        self.recomputed_prompt_tokens = self._counter(
            "recomputed_prompt_tokens",
            "Prompt (+ kept output) tokens prefilled again: evicted requests re-admitted, and"
            " requests resumed on this worker after another one died",
            "worker",
        )
        self.host_overhead = self._counter(
            "host_overhead_seconds",
            "Time back-to-back iterations took beyond the engine's own time (device waits on host)",
            "worker",
        )
        self.evictions = self._counter(
            "evictions", "Evictions by the batch former", "worker", "policy"
        )
        self.batch_formation_seconds = self._histogram(
            "batch_formation_seconds", "Time to form one batch", FORMATION_BUCKETS, "worker"
        )
        self.kv_handover_bytes = self._counter(
            "kv_handover_bytes",
            "Bytes of KV cache a decode worker received from prefill workers (hf engine)",
            "worker",
        )
        self.kv_handover_seconds = self._histogram(
            "kv_handover_seconds",
            "Per KV hand-over: from the prefill worker's export to the cache installed on the"
            " decode worker (copies, both pipes, the decode worker's queue)",
            HANDOVER_BUCKETS,
            "worker",
        )
        self.kv_handover_copy_seconds = self._counter(
            "kv_handover_copy_seconds",
            "Of the hand-overs' time: copying the KV to host arrays and installing it",
            "worker",
        )

    def _request_histograms(self) -> None:
        name = self.model_name
        self.ttft = self._histogram(
            "time_to_first_token_seconds", "Time to first token", TTFT_BUCKETS
        ).labels(name)
        self.itl = self._histogram(
            "inter_token_latency_seconds", "Time between streamed token events", ITL_BUCKETS
        ).labels(name)
        self.e2e = self._histogram(
            "e2e_request_latency_seconds", "Arrival to last token", REQUEST_BUCKETS
        ).labels(name)
        self.queue_time = self._histogram(
            "request_queue_time_seconds", "Arrival to first admission", REQUEST_BUCKETS
        ).labels(name)
        self.tpot = self._histogram(
            "request_time_per_output_token_seconds", "Mean time per output token", ITL_BUCKETS
        ).labels(name)
        self.interval_width = self._histogram(
            "predicted_interval_width_tokens", "hi - lo of the predicted interval", WIDTH_BUCKETS
        ).labels(name)

    def _request_counters(self) -> None:
        name = self.model_name
        self.request_success = self._counter(
            "request_success", "Finished requests by finish reason", "finished_reason"
        )
        self.workers_ready = self._gauge(
            "workers_ready", "Workers (or upstreams) ready to serve, read at each scrape"
        ).labels(name)
        self.http_requests = self._counter(
            "http_requests", "HTTP responses by route and status code", "handler", "status"
        )
        self.admission_rejections = self._counter(
            "admission_rejections", "Requests the gateway refused", "reason"
        )
        self.interval_misses = self._counter(
            "interval_misses", "Finished requests whose length fell outside [lo, hi]", "side"
        )
        self.requests_admitted = self._counter(
            "requests_admitted", "Requests admitted into a batch (first time)"
        ).labels(name)
        self.request_resubmissions = self._counter(
            "request_resubmissions",
            "Requests moved to a live worker after theirs died or hung, to go on from the tokens"
            " already streamed",
        ).labels(name)
        for reason in FINISH_REASONS:  # pre-create the series so dashboards see zeros
            self.request_success.labels(name, reason)
        for reason in REJECTION_REASONS:
            self.admission_rejections.labels(name, reason)
        for side in ("below", "above"):
            self.interval_misses.labels(name, side)
        self._online_calibration_metrics()

    def _online_calibration_metrics(self) -> None:
        self.online_coverage = self._gauge(
            "interval_online_coverage",
            "Online recalibration: 1 - miss rate of one side of the interval (lo: y < lo, hi:"
            " y > hi) over the last 200 finished requests that decided it",
            "side",
        )
        self.online_offset = self._gauge(
            "interval_online_offset",
            "Online recalibration: log1p-space widening of one side of the model's interval"
            " (0 = as calibrated offline, > 0 wider, < 0 narrower)",
            "side",
        )
        self.online_observations = self._counter(
            "interval_online_observations",
            "Finished requests fed to online recalibration (censored: finish reason length)",
            "censored",
        )

    def observe_online_calibration(
        self, summary: dict[str, Any], *, censored: bool | None = None
    ) -> None:
        """Publish an `OnlineCalibrator.summary()`; count a fed request unless censored is None."""
        name = self.model_name
        for side in ("lo", "hi"):
            self.online_offset.labels(name, side).set(summary[f"delta_{side}"])
            coverage = summary[f"running_coverage_{side}"]
            if coverage is not None:
                self.online_coverage.labels(name, side).set(coverage)
        for flag in ("false", "true"):  # pre-create both series
            self.online_observations.labels(name, flag)
        if censored is not None:
            self.online_observations.labels(name, "true" if censored else "false").inc()

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        """Apply one worker report: set its gauges, add its counters since the last report.

        `stats.evictions`, `prompt_tokens`, `generation_tokens`, `recomputed_tokens` are deltas
        since the previous report (they are added); `batch_formation_s` holds one duration per
        formed batch.
        """
        name = self.model_name
        worker = str(stats.worker_id)
        self.num_requests_running.labels(name, worker).set(stats.num_running)
        self.num_requests_waiting.labels(name, worker).set(stats.num_waiting)
        capacity = stats.kv_capacity_tokens
        usage = min(1.0, stats.kv_tokens / capacity) if capacity > 0 else 0.0
        self.kv_cache_usage_perc.labels(name, worker).set(usage)
        self.num_preemptions.labels(name, worker).inc(stats.evictions)
        self.evictions.labels(name, worker, policy).inc(stats.evictions)
        self.prompt_tokens.labels(name, worker).inc(stats.prompt_tokens)
        self.generation_tokens.labels(name, worker).inc(stats.generation_tokens)
        self.recomputed_prompt_tokens.labels(name, worker).inc(stats.recomputed_tokens)
        self.host_overhead.labels(name, worker).inc(stats.host_overhead_s)
        formation = self.batch_formation_seconds.labels(name, worker)
        for elapsed_s in stats.batch_formation_s:
            formation.observe(elapsed_s)
        if stats.handover_bytes or stats.handover_s:
            self.kv_handover_bytes.labels(name, worker).inc(stats.handover_bytes)
            self.kv_handover_copy_seconds.labels(name, worker).inc(stats.handover_copy_s)
            handover = self.kv_handover_seconds.labels(name, worker)
            for elapsed_s in stats.handover_s:
                handover.observe(elapsed_s)

    def observe_readiness(self, described: dict[str, Any], backend_ready: bool) -> None:
        """Set `workers_ready` from a backend's `describe()`: its workers that say they are
        ready, or 1/0 from `backend_ready` when its workers carry no such flag."""
        workers = [w for w in described.get("workers", []) if "ready" in w]
        ready = sum(1 for w in workers if w["ready"]) if workers else int(backend_ready)
        self.workers_ready.set(ready)

    def observe_response(self, path: str, status: int) -> None:
        """Count one HTTP response; paths outside the API are counted as "other"."""
        handler = path if path in ROUTES else "other"
        self.http_requests.labels(self.model_name, handler, str(status)).inc()

    def forget_worker(self, worker_id: int) -> None:
        """Drop a gone worker's gauges (its counters stay: they are cumulative)."""
        for gauge in (self.num_requests_running, self.num_requests_waiting):
            _remove(gauge, self.model_name, str(worker_id))
        _remove(self.kv_cache_usage_perc, self.model_name, str(worker_id))

    def observe_resubmission(self) -> None:
        """Count one request resubmitted after its worker died (lossless failover)."""
        self.request_resubmissions.inc()

    def observe_rejection(self, reason: str) -> None:
        self.admission_rejections.labels(self.model_name, reason).inc()

    def track(self, request: GenerationRequest) -> RequestObserver:
        """Start observing one accepted request (records its predicted interval width)."""
        self.interval_width.observe(request.hi - request.lo)
        return RequestObserver(self, request)

    def render(self) -> bytes:
        """The exposition text, without prometheus-client's `*_created` series (as vLLM)."""
        lines = generate_latest(self.registry).split(b"\n")
        return b"\n".join(line for line in lines if not _is_created_sample(line))


def _is_created_sample(line: bytes) -> bool:
    """A `*_created` sample, or the HELP/TYPE line of its family (none of ours ends so)."""
    words = line.split(b" ", 3)
    name = words[2] if line.startswith(b"# ") and len(words) > 2 else line.split(b"{", 1)[0]
    return name.split(b" ", 1)[0].endswith(b"_created")


ROUTES = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics",
     "/v1/scheduler"}
)  # fmt: skip


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class RequestObserver:
    """One request's latency timeline, fed with its TokenEvents as they reach the gateway."""

    __slots__ = ("_metrics", "_request", "_admitted", "_first_token_s", "_last_token_s", "_done")

    def __init__(self, metrics: Metrics, request: GenerationRequest) -> None:
        self._metrics = metrics
        self._request = request
        self._admitted = False
        self._first_token_s: float | None = None
        self._last_token_s = 0.0
        self._done = False

    def on_event(self, event: TokenEvent, now_s: float) -> None:
        """TTFT on the first token event, ITL (one gap per event) after it, queue time once."""
        m = self._metrics
        if event.first_scheduled_s is not None and not self._admitted:
            self._admitted = True
            m.requests_admitted.inc()
            m.queue_time.observe(max(0.0, event.first_scheduled_s - self._request.arrival_s))
        if not (event.token_ids or event.text):
            return
        if self._first_token_s is None:
            self._first_token_s = now_s
            m.ttft.observe(max(0.0, now_s - self._request.arrival_s))
        else:
            m.itl.observe(max(0.0, now_s - self._last_token_s))
        self._last_token_s = now_s

    def on_finish(self, reason: str, num_output_tokens: int, now_s: float) -> None:
        """Outcome, E2E, TPOT and, for requests whose length is known, interval misses."""
        if self._done:
            return
        self._done = True
        m, request = self._metrics, self._request
        m.request_success.labels(m.model_name, reason).inc()
        m.e2e.observe(max(0.0, now_s - request.arrival_s))
        if self._first_token_s is not None and num_output_tokens > 1:
            gap_s = self._last_token_s - self._first_token_s
            m.tpot.observe(max(0.0, gap_s) / (num_output_tokens - 1))
        side = _miss_side(reason, num_output_tokens, request.lo, request.hi)
        if side is not None:
            m.interval_misses.labels(m.model_name, side).inc()


def _miss_side(reason: str, num_output_tokens: int, lo: int, hi: int) -> str | None:
    """ "below"/"above" when the true length is known to lie outside [lo, hi].

    A "stop" request's length is exact; a "length" one only says true length >= max_tokens,
    which is a miss above when hi < that; aborted and failed requests say nothing.
    """
    if reason == "stop" and num_output_tokens < lo:
        return "below"
    if reason in ("stop", "length") and num_output_tokens > hi:
        return "above"
    return None
