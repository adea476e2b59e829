"""Generation parameters at the gateway: honoured (stop, stop_token_ids, token-id prompts,
sampling values passed on, the workers' context limit) or refused with a 400 naming them."""

from __future__ import annotations

from typing import Any

import pytest

from service.gateway.stop import StopMatcher
from tests.service.fakes import MODEL, FakeBackend, make_app, parse_sse, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PROMPT = {"model": MODEL, "prompt": "say six words please", "max_tokens": 10}


async def _complete(backend: FakeBackend, body: dict[str, Any], **overrides: Any) -> Any:
    app, _ = make_app(backend, **overrides)
    async with serve(app) as client:
        return await client.post("/v1/completions", json=body)


async def test_a_stop_string_ends_the_output_before_it_and_frees_the_request() -> None:
    backend = FakeBackend(num_tokens=6)  # text " t0 t1 t2 t3 t4 t5"
    response = await _complete(backend, {**PROMPT, "stop": ["zz", "t3"]})
    choice = response.json()["choices"][0]
    assert choice["text"] == " t0 t1 t2 " and choice["finish_reason"] == "stop"
    assert response.json()["usage"]["completion_tokens"] == 4  # through the token that held it
    assert backend.cancelled == [backend.requests[0].request_id]


async def test_a_stop_string_split_over_tokens_is_found_while_streaming() -> None:
    backend = FakeBackend(num_tokens=6)
    app, _ = make_app(backend)
    async with serve(app) as client:
        body = {**PROMPT, "stop": " t2 t", "stream": True}
        events = parse_sse((await client.post("/v1/completions", json=body)).text)
    choices = [e["choices"][0] for e in events[:-1]]
    assert "".join(c["text"] for c in choices) == " t0 t1"
    assert choices[-1]["finish_reason"] == "stop"


async def test_without_a_match_the_held_back_text_is_released() -> None:
    response = await _complete(FakeBackend(num_tokens=3), {**PROMPT, "stop": "t9 and more"})
    choice = response.json()["choices"][0]
    assert choice["text"] == " t0 t1 t2" and choice["finish_reason"] == "stop"  # the fake's EOS


async def test_stop_token_ids_end_the_output_past_min_tokens() -> None:
    backend = FakeBackend(num_tokens=8)  # token ids 0, 1, 2, ...
    body = {**PROMPT, "stop_token_ids": [1, 4], "min_tokens": 3}
    response = await _complete(backend, body)
    choice = response.json()["choices"][0]
    # token 1 is output token 2 (within min_tokens 3): it does not stop; token 4 does, unshown
    assert choice["text"] == " t0 t1 t2 t3" and choice["finish_reason"] == "stop"
    assert response.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("prompt", [[5, 7, 9], [[5, 7, 9]], [5.0, 7, 9]])
async def test_token_id_prompts_reach_the_backend_as_given(prompt: Any) -> None:
    backend = FakeBackend(num_tokens=2)
    response = await _complete(backend, {**PROMPT, "prompt": prompt})
    assert response.status_code == 200
    assert backend.requests[0].prompt_token_ids == (5, 7, 9)
    assert response.json()["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"prompt": [5, 1000]}, "prompt", "outside the vocabulary"),
        ({"prompt": [5, -1]}, "prompt", "token ids"),
        ({"prompt": [[1], [2]]}, "prompt", "exactly one"),
        ({"prompt": [True]}, "prompt", "token ids"),
        ({"logprobs": 1}, "logprobs", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"echo": True}, "echo", "not supported"),
        ({"best_of": 2}, "best_of", "not supported"),
        ({"n": 2}, "n", "not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"frequency_penalty": -1}, "frequency_penalty", "not supported"),
        ({"logit_bias": {"5": 10}}, "logit_bias", "not supported"),
        ({"suffix": "end"}, "suffix", "not supported"),
        ({"temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"stop": ""}, "stop", "at least 1 character"),
        ({"stop_token_ids": [-3]}, "stop_token_ids", "greater than or equal to 0"),
    ],
)
async def test_out_of_range_or_unsupported_values_are_400_naming_the_parameter(
    extra: dict[str, Any], param: str, words: str
) -> None:
    backend = FakeBackend()
    response = await _complete(backend, {**PROMPT, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert backend.requests == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
)
async def test_chat_features_kvsched_lacks_are_refused(extra: dict[str, Any], param: str) -> None:
    app, _ = make_app(FakeBackend())
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    async with serve(app) as client:
        response = await client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_neutral_values_of_unsupported_parameters_are_accepted() -> None:
    neutral = {"logprobs": False, "echo": False, "best_of": 1, "n": 1, "presence_penalty": 0,
               "frequency_penalty": 0.0, "logit_bias": {}, "suffix": "", "user": "u1"}  # fmt: skip
    response = await _complete(FakeBackend(num_tokens=1), {**PROMPT, **neutral})
    assert response.status_code == 200, response.text


async def test_sampling_values_reach_the_backend_and_greedy_is_the_default() -> None:
    backend = FakeBackend(num_tokens=1)
    app, _ = make_app(backend)
    async with serve(app) as client:
        await client.post("/v1/completions", json={**PROMPT, "temperature": 0.7, "top_p": 0.9,
                                                   "seed": 42})  # fmt: skip
        await client.post("/v1/completions", json={**PROMPT, "temperature": 0.7})
        await client.post("/v1/completions", json={**PROMPT, "seed": -1})
        await client.post("/v1/completions", json=PROMPT)
    seeded, unseeded, negative, default = backend.requests
    assert (seeded.temperature, seeded.top_p, seeded.seed) == (0.7, 0.9, 42)
    assert 0 <= unseeded.seed < 2**63  # drawn at the gateway: a replay elsewhere draws the same
    assert negative.seed == 2**63 - 1
    assert (default.temperature, default.top_p) == (0.0, 1.0)


async def test_the_workers_context_limit_is_enforced_and_advertised() -> None:
    backend = FakeBackend(num_tokens=1, worker_max_model_len=12)
    app, _ = make_app(backend)  # settings' max_model_len stays 8192
    async with serve(app) as client:
        models = (await client.get("/v1/models")).json()
        fits = await client.post("/v1/completions", json={**PROMPT, "max_tokens": 8})
        too_long = await client.post("/v1/completions", json={**PROMPT, "max_tokens": 9})
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_completion_tokens": 2, "max_tokens": 50}  # fmt: skip
        ignored_cap = await client.post("/v1/chat/completions", json=chat)
    assert models["data"][0]["max_model_len"] == 12
    assert fits.status_code == 200
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert ignored_cap.status_code == 400 and ignored_cap.json()["error"]["param"] == "max_tokens"
    assert [r.max_tokens for r in backend.requests] == [8]


def test_stop_matcher_holds_back_only_what_may_start_a_stop_string() -> None:
    matcher = StopMatcher(("END", "xyz"))
    assert matcher.feed("hello E") == ("hello", False)  # " E" may begin "END": held back
    assert matcher.feed("N") == (" ", False)  # "EN" still may
    assert matcher.feed("D and more") == ("", True)
    other = StopMatcher(("abc",))
    assert other.feed("xxab") == ("xx", False)
    assert other.feed("d") == ("a", False)
    assert other.flush() == "bd"
    assert StopMatcher(()).feed("anything") == ("anything", False)
    with pytest.raises(ValueError, match="empty"):
        StopMatcher(("",))
