"""The background reader of every upstream's /metrics (docs/serving-upstream.md, "Routing by load").

Each round GETs `/metrics` of every upstream at once (and `/v1/models` until the served model
name is known), updates reachability, reported load and the learned KV capacity, reports one
`WorkerStats` per upstream (worker = its index) to `metrics.observe_worker`, then calls
`on_round` so queued requests are admitted against the fresh numbers. Reachable = the upstream
answered /metrics with a status below 500 within the probe timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

import httpx

from service.backends.upstream.state import ReportedLoad, Upstream, parse_load
from service.metrics import Metrics
from service.protocol import WorkerStats
from service.settings import Settings

PROBE_TIMEOUT_S: Final = 5.0


logger = logging.getLogger(__name__)


class Prober:
    """Keeps `upstreams` up to date; `run()` loops every `settings.upstream_probe_interval_s`."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        client: httpx.AsyncClient,
        settings: Settings,
        metrics: Metrics | None,
        on_round: Callable[[], None],
    ) -> None:
        self.upstreams, self.client, self.metrics = upstreams, client, metrics
        self.interval_s = settings.upstream_probe_interval_s
        self.timeout_s = min(PROBE_TIMEOUT_S, settings.upstream_timeout_s)
        self.policy = settings.policy
        self.on_round = on_round

    async def run(self) -> None:
        """Probe every interval until cancelled; a failed round is logged, never fatal."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.probe_all()
            except Exception:  # an unforeseen reply must not stop the probing for good
                logger.exception("probing the upstreams failed; retrying next interval")

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(u) for u in self.upstreams))
        self.report()
        self.on_round()

    async def probe(self, upstream: Upstream) -> None:
        """Read /metrics (and /v1/models until known) of one upstream."""
        try:
            response = await self.client.get(f"{upstream.url}/metrics", timeout=self.timeout_s)
            if response.status_code >= 500:
                upstream.mark_down(f"/metrics answered {response.status_code}")
                return
            reported = ReportedLoad()
            if response.status_code == 200:
                with contextlib.suppress(ValueError):  # not Prometheus text: no load known
                    reported = parse_load(response.text)
            if upstream.model is None:
                upstream.model = await self._served_model(upstream)
        except httpx.HTTPError as exc:
            upstream.mark_down(f"{type(exc).__name__}: {exc}".rstrip(": "))
            return
        upstream.reported, upstream.reachable, upstream.last_error = reported, True, None
        upstream.learn_capacity()

    async def _served_model(self, upstream: Upstream) -> str | None:
        """The model an upstream serves (and its context length, where it says)."""
        response = await self.client.get(f"{upstream.url}/v1/models", timeout=self.timeout_s)
        try:
            card = response.json()["data"][0]
            context = card.get("max_model_len")
            if isinstance(context, int) and not isinstance(context, bool) and context > 0:
                upstream.max_model_len = context
            return str(card["id"])
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None  # the request body's "model" is then left out: the upstream's default

    def report(self) -> None:
        if self.metrics is None:
            return
        for u in self.upstreams:
            stats = WorkerStats(
                worker_id=u.index, num_running=u.num_in_flight,
                num_waiting=u.reported.num_waiting or 0, kv_tokens=u.projected_tokens,
                kv_capacity_tokens=u.capacity_tokens or 0,
                prompt_tokens=u.unreported_prompt_tokens,
                generation_tokens=u.unreported_generation_tokens,
            )  # fmt: skip
            u.unreported_prompt_tokens = u.unreported_generation_tokens = 0
            self.metrics.observe_worker(stats, self.policy)
