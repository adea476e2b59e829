"""Schemathesis against a live `kvsched serve`: the OpenAPI document says what the server does.

Every check schemathesis has runs on every generated case (schema-valid and schema-violating
bodies, derandomized), with one replaced: a schema-valid request may be refused only for the
three rules JSON Schema cannot state, which the operations' descriptions name (a prompt with at
least one token; prompt + max_tokens within the context; min_tokens <= max_tokens). Any other
400 to a schema-valid body, any 5xx, an undocumented status or content type, or a response that
breaks its schema fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.service.live_server import live_server

EXAMPLES = 600  # per operation; the two POST operations alone give > 1,000 cases
CASES: list[int] = []
# the refusals JSON Schema cannot express: (error code, param, start of the message)
RULES = (
    ("context_length_exceeded", "max_tokens", "This model's"),  # prompt + max_tokens too long
    ("invalid_value", "min_tokens", "min_tokens ("),  # min_tokens > max_tokens
    ("invalid_value", "prompt", "prompt has no tokens"),  # e.g. only control characters
)


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    with live_server(
        ["--max-model-len", "256", "--speedup", "50", "--log-level", "warning"]
    ) as url:
        yield url


@pytest.fixture(scope="module")
def live_schema(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schemathesis.check
def refused_only_by_unstated_rules(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A schema-valid body gets 2xx, 404 or 429, or 400 for a rule the schema cannot state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return None
    if response.status_code in (404, 429):  # an unknown model (as in OpenAI's API), overload
        return None
    error = json.loads(response.content)["error"]
    for code, param, message in RULES:
        if response.status_code == 400 and (error["code"], error["param"]) == (code, param):
            if error["message"].startswith(message):
                return None
    raise AssertionError(f"schema-valid request refused: {response.status_code} {error}")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_server_behaves_as_its_openapi_document_says(case: schemathesis.Case) -> None:
    CASES.append(1)
    response = case.call(timeout=30)
    case.validate_response(
        response,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[refused_only_by_unstated_rules],
    )


def test_enough_cases_ran() -> None:
    if not CASES:
        pytest.skip("run together with the conformance test above")
    assert len(CASES) >= 1000, f"only {len(CASES)} cases ran"  # 1,906 here


def test_document_states_limits_and_content_types(live_url: str) -> None:
    doc = httpx.get(f"{live_url}/openapi.json").json()
    completions = doc["paths"]["/v1/completions"]["post"]
    assert set(completions["responses"]["200"]["content"]) == {
        "application/json",
        "text/event-stream",
    }
    assert "422" not in completions["responses"]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert any(kind.startswith("text/plain") for kind in metrics)
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    max_tokens = next(b for b in props["max_tokens"]["anyOf"] if b.get("type") == "integer")
    assert max_tokens == {"type": "integer", "minimum": 1, "maximum": 255}
    models = httpx.get(f"{live_url}/v1/models").json()
    assert models["data"][0]["max_model_len"] == 256
