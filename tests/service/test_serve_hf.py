"""End to end: `kvsched serve --engine hf` on a tiny random model built in the test.

Starts the real server (gateway + spawned worker with the hf engine) as a subprocess and talks
to it with the official `openai` SDK. Needs torch + transformers (the `hf` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from tests.service.live_server import live_server  # noqa: E402
from tests.service.tiny_llama import WORDS, build_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path)
    args = ["--engine", "hf", "--model", str(path), "--policy", "amin", "--predictor", "none",
            "--kv-tokens", "400", "--log-level", "warning"]  # fmt: skip
    with live_server(args) as url:  # max_model_len: the model's own 128 positions
        yield url


def test_completions_and_streaming_chat_through_the_hf_engine(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    model = client.models.list().data[0].id
    prompt = " ".join(WORDS[:8])
    done = client.completions.create(
        model=model, prompt=prompt, max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert done.usage is not None and done.usage.completion_tokens == 6
    assert done.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_many_concurrent_requests_all_complete_under_a_small_kv_budget(server: str) -> None:
    """400 KV tokens force A_min to queue and evict; every request still gets its tokens."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    model = client.models.list().data[0].id
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        out = client.completions.create(
            model=model, prompt=" ".join(WORDS[i : i + 10]), max_tokens=20 + i,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert out.usage is not None
        return out.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(one, range(12)))
    assert counts == [20 + i for i in range(12)]
    scheduler = httpx.get(f"{server}/v1/scheduler").json()
    assert scheduler["policy"] == "amin" and scheduler["num_requests"] == 0


def test_the_models_context_is_enforced_at_the_gateway(server: str) -> None:
    """The model has 128 positions (the default --max-model-len is 8192): the gateway learns it
    from the workers, advertises it, and refuses what does not fit with a 400, not a 500."""
    models = httpx.get(f"{server}/v1/models").json()
    assert models["data"][0]["max_model_len"] == 128
    long = " ".join(WORDS[i % len(WORDS)] for i in range(140))
    response = httpx.post(f"{server}/v1/completions", json={"prompt": long, "max_tokens": 5})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "128" in response.json()["error"]["message"]


def test_stop_strings_and_seeded_sampling(server: str) -> None:
    body = {"prompt": " ".join(WORDS[:6]), "max_tokens": 12, "ignore_eos": True}
    whole = httpx.post(f"{server}/v1/completions", json=body).json()["choices"][0]["text"]
    word = whole.split()[3]
    cut = httpx.post(f"{server}/v1/completions", json={**body, "stop": [word]}).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == whole[: whole.index(word)]
    sampled = {**body, "temperature": 1.0, "seed": 11}
    texts = [httpx.post(f"{server}/v1/completions", json=sampled).json()["choices"][0]["text"]
             for _ in range(2)]  # fmt: skip
    assert texts[0] == texts[1] != whole
