"""Hypothesis against the in-process gateway: no input, however malformed, gets a 5xx.

Bodies are dicts with the real field names holding plausible or arbitrary JSON values (plus
unknown keys), and raw garbage bytes; every 4xx must carry OpenAI's error object. Every path of
the app's own /openapi.json is also called with an empty body. Examples are derandomized (the
same inputs every run) and the app (FakeBackend, 64-token context) is started once per module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.fakes import MODEL, FakeBackend, make_app, serve

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SMALL_INTS = st.integers(min_value=-3, max_value=80) | st.integers()
FIT_INTS = st.integers(min_value=1, max_value=20) | SMALL_INTS  # mostly within the 64-token limit
WORDS = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.just("hello world")
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": WORDS})
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | JSON_VALUES},
    optional={"content": WORDS | st.lists(PART, max_size=3) | JSON_VALUES, "name": JSON_VALUES},
)


PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([MODEL, "other-model"]),
    "max_tokens": FIT_INTS,
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "temperature": st.floats(allow_nan=False),
    "n": st.just(1) | st.integers(min_value=0, max_value=2),
    "stop": st.lists(WORDS, max_size=2),
    "priority": FIT_INTS,
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(min_value=0, max_value=2) | SMALL_INTS,
    "length_hint": FIT_INTS,
}
CHAT_PLAUSIBLE = {**PLAUSIBLE, "max_completion_tokens": FIT_INTS}
PROMPTS = WORDS | st.lists(WORDS, max_size=2)
GOOD_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"])},
    optional={
        "content": WORDS
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": WORDS}), max_size=2)
    },
)
MESSAGES = st.lists(GOOD_MESSAGE, min_size=1, max_size=3)


def _wild(fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, st.SearchStrategy[Any]]:
    """Each field either plausible or any JSON value, plus an unknown field."""
    return {**{k: v | JSON_VALUES for k, v in fields.items()}, "unknown_field": JSON_VALUES}


# half the bodies are well-typed (most then succeed), half have arbitrary values anywhere
COMPLETION = st.fixed_dictionaries({"prompt": PROMPTS}, optional=PLAUSIBLE) | (
    st.fixed_dictionaries({"prompt": PROMPTS | JSON_VALUES}, optional=_wild(PLAUSIBLE))
)
CHAT = st.fixed_dictionaries({"messages": MESSAGES}, optional=CHAT_PLAUSIBLE) | (
    st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3) | JSON_VALUES}, optional=_wild(CHAT_PLAUSIBLE)
    )
)
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Client:
    """A synchronous face of the in-process httpx client (its loop runs in a portal thread)."""

    def __init__(self, portal: BlockingPortal, http: httpx.AsyncClient) -> None:
        self.portal, self.http = portal, http

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(
            lambda: self.http.request(method, path, **kwargs)
        )
        return response


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    app, _ = make_app(FakeBackend(num_tokens=3, delay_s=0), max_model_len=64)
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(serve(app)) as http:
            yield Client(portal, http)


def assert_not_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)


def _post_json(client: Client, path: str, body: dict[str, Any]) -> httpx.Response:
    content = json.dumps(body).encode()  # no NaN: JSON_VALUES excludes it
    headers = {"content-type": "application/json"}
    return client.request("POST", path, content=content, headers=headers)


@FUZZ
@given(body=COMPLETION)
def test_completions_never_5xx(client: Client, body: dict[str, Any]) -> None:
    assert_not_5xx(_post_json(client, "/v1/completions", body))


@FUZZ
@given(body=CHAT)
def test_chat_completions_never_5xx(client: Client, body: dict[str, Any]) -> None:
    assert_not_5xx(_post_json(client, "/v1/chat/completions", body))


@settings(FUZZ, max_examples=100)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    content=st.binary(max_size=200) | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded"]
    ),
)
def test_garbage_bodies_never_5xx(
    client: Client, path: str, content: bytes, content_type: str
) -> None:
    response = client.request("POST", path, content=content, headers={"content-type": content_type})
    assert_not_5xx(response)
    assert response.status_code in (400, 404, 413, 200), response.text


def test_every_openapi_path_answers_below_500(client: Client) -> None:
    schema = client.request("GET", "/openapi.json").json()
    paths: dict[str, dict[str, Any]] = schema["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/ready"} <= set(paths)
    for path, operations in paths.items():
        for method in ("get", "post"):
            response = client.request(method.upper(), path, content=b"")
            assert_not_5xx(response)
            if method in operations:
                assert response.status_code in (200, 400), (method, path, response.text)
            else:
                assert response.status_code == 405, (method, path)
