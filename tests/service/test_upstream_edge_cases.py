"""`--engine openai-upstream` edge cases: odd upstream statuses and non-finite metrics.

Each test is a scenario that once went wrong: an upstream's 3xx passed through as the client's
status, and an infinite gauge in an upstream's /metrics that crashed the probe at start-up.
`wait_for` bounds guard against hangs only; nothing here measures speed.
"""

from __future__ import annotations

import pytest

from tests.service.fakes import serve
from tests.service.test_upstream import gateway, upstreams
from tests.service.test_upstream_errors import assert_error, post
from tests.service.upstream_fake import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("upstream_status", [307, 304])
async def test_an_upstream_redirect_or_not_modified_is_a_502_not_passed_through(
    upstream_status: int,
) -> None:
    fake = FakeUpstream()
    fake.status = upstream_status
    async with upstreams(fake) as urls, serve(gateway(urls)) as client:
        response = await post(client)
    assert f"answered {upstream_status}" in assert_error(response, 502, "bad_gateway")


async def test_an_upstream_reporting_infinite_gauges_still_serves() -> None:
    # +Inf waiting once crashed the probe (OverflowError), so the gateway could not even start
    fake = FakeUpstream()
    fake.num_waiting = float("inf")  # type: ignore[assignment]
    async with upstreams(fake) as urls, serve(gateway(urls)) as client:
        response = await post(client)
        state = (await client.get("/v1/scheduler")).json()
    assert response.status_code == 200, response.text
    upstream = state["upstreams"][0]
    assert upstream["reachable"] is True and upstream["reported_num_waiting"] is None
