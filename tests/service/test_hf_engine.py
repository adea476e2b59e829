"""The hf engine on a tiny random Llama built in the test: lengths, determinism, eviction
(resume and restart preemption)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from service.engines._hf_batch import Row, forward_rows, group_rows  # noqa: E402
from service.engines.hf import HFEngine, load_tokenizer  # noqa: E402
from service.protocol import GenerationRequest  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker.engine_host import build_loop, waiting_request  # noqa: E402
from tests.service.tiny_llama import build_model, run  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path)
    return path


def settings(path: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {"engine": "hf", "model": str(path), "predictor": "none"}
    fields.update({"policy": "fcfs", "kv_tokens": 2000, **overrides})
    return Settings(**fields)  # type: ignore[arg-type]


def request(
    name: str, prompt: tuple[int, ...], max_tokens: int, **extra: object
) -> GenerationRequest:
    return GenerationRequest(name, prompt, max_tokens=max_tokens, lo=1, hi=max_tokens, **extra)  # type: ignore[arg-type]


PROMPTS = [(1, 5, 9, 13), (1, 7), (1, 20, 21, 22, 23, 24, 25), (1, 3, 3, 3, 40), (1, 50)]


def test_tokenizer_adapter_adds_bos_and_skips_specials(model_path: Path) -> None:
    tokenizer = load_tokenizer(settings(model_path))
    assert tokenizer.eos_token_id == 2
    assert tokenizer.encode("w0 w5") == [1, 3, 8]
    assert tokenizer.decode([1, 3, 8, 2]).split() == ["w0", "w5"]


def test_requests_finish_at_max_tokens_and_match_running_alone(model_path: Path) -> None:
    cfg = settings(model_path)
    engine = HFEngine(cfg, 0, device="cpu")
    assert engine.kv_capacity_tokens == 2000 and engine.max_model_len == 128
    requests = [request(f"r{i}", p, 6 + 3 * i, ignore_eos=True) for i, p in enumerate(PROMPTS)]
    together, reasons, _ = run(engine, cfg, requests)
    for i, r in enumerate(requests):
        assert len(together[r.request_id]) == 6 + 3 * i
        assert reasons[r.request_id] == "length"
        alone, _, _ = run(HFEngine(cfg, 0, device="cpu"), cfg, [r])
        assert alone[r.request_id] == together[r.request_id]
    assert len({tuple(t) for t in together.values()}) > 1  # the prompts do matter


def test_chunked_prefill_gives_the_same_tokens(model_path: Path) -> None:
    cfg = settings(model_path)
    requests = [request(f"r{i}", p, 8, ignore_eos=True) for i, p in enumerate(PROMPTS)]
    whole, _, _ = run(HFEngine(cfg, 0, device="cpu"), cfg, requests)
    engine = HFEngine(cfg, 0, device="cpu")
    loop, _ = build_loop(cfg, engine)
    loop.max_num_batched_tokens = 3
    tokens: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    for i, r in enumerate(requests):
        engine.add(i, r)
        loop.add_request(waiting_request(r, i))
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id, token_id in outcome.tokens.items():
            tokens[loop_id].append(token_id)
    for i, r in enumerate(requests):  # float sums differ by chunking, argmax should not
        assert tokens[i] == whole[r.request_id]


@pytest.mark.parametrize("preemption", ["resume", "restart"])
@pytest.mark.parametrize("chunk_tokens", [None, 4])
def test_evicted_requests_end_with_the_tokens_of_an_undisturbed_run(
    model_path: Path, preemption: str, chunk_tokens: int | None
) -> None:
    """Resume: prompt + kept tokens prefilled again, then on; restart: regenerated."""
    cfg = settings(model_path, policy="vllm", kv_tokens=60, preemption=preemption)
    requests = [request(f"r{i}", p, 24, ignore_eos=True) for i, p in enumerate(PROMPTS[:3])]
    engine = HFEngine(cfg, 0, device="cpu")
    tokens, reasons, num_evicted = run(engine, cfg, requests, chunk_tokens)
    assert num_evicted > 0 and engine._sequences == {}
    roomy = settings(model_path)
    for r in requests:
        alone, _, _ = run(HFEngine(roomy, 0, device="cpu"), roomy, [r])
        assert tokens[r.request_id] == alone[r.request_id]
        assert len(tokens[r.request_id]) == 24 and reasons[r.request_id] == "length"


@pytest.mark.parametrize("preemption", ["resume", "restart"])
def test_sampling_is_fixed_by_the_seed_under_eviction_and_batching(
    model_path: Path, preemption: str
) -> None:
    """temperature > 0 samples; the seed alone fixes the tokens, whatever else runs beside the
    request, however often it is evicted; other seeds draw other tokens; a tiny top_p is greedy."""

    def sampled(seed: int, **extra: object) -> GenerationRequest:
        return request(f"s{seed}", PROMPTS[0], 24, ignore_eos=True, temperature=1.0, seed=seed,
                       **extra)  # fmt: skip

    roomy = settings(model_path)
    alone, _, _ = run(HFEngine(roomy, 0, device="cpu"), roomy, [sampled(7)])
    tight = settings(model_path, policy="vllm", kv_tokens=60, preemption=preemption)
    crowd = [sampled(7)] + [request(f"r{i}", p, 24, ignore_eos=True) for i, p in
                            enumerate(PROMPTS[1:3])]  # fmt: skip
    tokens, _, num_evicted = run(HFEngine(tight, 0, device="cpu"), tight, crowd, 4)
    assert num_evicted > 0 and tokens["s7"] == alone["s7"]
    greedy, _, _ = run(HFEngine(roomy, 0, device="cpu"), roomy,
                       [request("g", PROMPTS[0], 24, ignore_eos=True)])  # fmt: skip
    others = [run(HFEngine(roomy, 0, device="cpu"), roomy, [sampled(s)])[0][f"s{s}"]
              for s in (8, 9)]  # fmt: skip
    assert alone["s7"] != greedy["g"] and all(o != alone["s7"] for o in others)
    nucleus, _, _ = run(HFEngine(roomy, 0, device="cpu"), roomy, [sampled(7, top_p=1e-6)])
    assert nucleus["s7"] == greedy["g"]


def test_eos_stops_unless_ignored_or_below_min_tokens(model_path: Path) -> None:
    cfg = settings(model_path)
    engine = HFEngine(cfg, 0, device="cpu")
    probe, _, _ = run(engine, cfg, [request("p", PROMPTS[0], 12, ignore_eos=True)])
    generated = probe["p"]
    stop_at = 3
    engine.eos_token_ids = frozenset({generated[stop_at]})  # pretend that token is EOS
    first = generated.index(generated[stop_at])
    out, reasons, _ = run(engine, cfg, [request("s", PROMPTS[0], 12)])
    assert out["s"] == generated[: first + 1] and reasons["s"] == "stop"
    out, reasons, _ = run(engine, cfg, [request("i", PROMPTS[0], 12, ignore_eos=True)])
    assert out["i"] == generated and reasons["i"] == "length"
    out, _, _ = run(engine, cfg, [request("m", PROMPTS[0], 12, min_tokens=first + 1)])
    assert out["m"][:first] == generated[:first]  # EOS masked only where it would have won
    assert out["m"][first] not in engine.eos_token_ids and len(out["m"]) >= first + 2


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a local directory"):
        load_tokenizer(settings(tmp_path / "nope"))


def test_batched_forwards_match_the_per_request_path_exactly(model_path: Path) -> None:
    """Mixed batch: prompt lengths 2..11, chunked prefill, evictions, different finishing steps."""
    cfg = settings(model_path, policy="vllm", kv_tokens=70)
    prompts = [*PROMPTS, (1, *range(30, 40)), (1, 44, 45)]
    requests = [request(f"r{i}", p, 9 + 4 * i, ignore_eos=True) for i, p in enumerate(prompts)]
    batched = HFEngine(cfg, 0, device="cpu")
    reference = HFEngine(cfg, 0, device="cpu", batch=False)
    assert batched.batched and not reference.batched
    sizes: list[int] = []
    batched.model.register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(int(kw["input_ids"].shape[0])), with_kwargs=True
    )
    got, got_reasons, got_evicted = run(batched, cfg, requests, chunk_tokens=5)
    want, want_reasons, want_evicted = run(reference, cfg, requests, chunk_tokens=5)
    assert got_evicted == want_evicted > 0
    assert got == want and got_reasons == want_reasons
    assert [len(got[r.request_id]) for r in requests] == [9 + 4 * i for i in range(len(prompts))]
    assert max(sizes) >= 3  # rows really ran together
    assert batched._sequences == {}  # every finished request's KV was dropped


def test_batched_caches_hold_only_their_own_tokens(model_path: Path) -> None:
    cfg = settings(model_path)
    engine = HFEngine(cfg, 0, device="cpu")
    loop, _ = build_loop(cfg, engine)
    for i, prompt in enumerate(PROMPTS):
        r = request(f"r{i}", prompt, 20, ignore_eos=True)
        engine.add(i, r)
        loop.add_request(waiting_request(r, i))
    for step in range(4):
        loop.step(time.time())
        for i, prompt in enumerate(PROMPTS):
            keys = engine._sequences[i].cache.layers[0].keys
            assert keys.shape[0] == 1 and keys.shape[2] == len(prompt) + step
            assert keys.untyped_storage().nbytes() == keys.nbytes  # not a view of the batch


def test_group_rows_bounds_padding() -> None:
    assert group_rows([1, 1, 1]) == [[0, 1, 2]]
    assert group_rows([10, 2, 9, 8]) == [[0, 2, 3], [1]]
    assert group_rows([5, 4], max_pad_fraction=0.0) == [[0], [1]]
    with pytest.raises(ValueError, match="max_pad_fraction"):
        group_rows([3], max_pad_fraction=1.0)


def test_forward_rows_logits_and_caches_match_separate_forwards(model_path: Path) -> None:
    """Float-level check (argmax on a tiny model could hide wrong positions or masks)."""
    model = HFEngine(settings(model_path), 0, device="cpu").model
    pasts = [(1, 5, 9, 13, 17, 21), (), (1, 7), (1, 30, 31)]
    news = [(4,), (1, 8, 9), (11, 12, 13, 14), (6,)]

    def prefilled(tokens: tuple[int, ...]) -> object:
        cache = transformers.DynamicCache(config=model.config)
        if tokens:
            model(input_ids=torch.tensor([tokens]), past_key_values=cache, use_cache=True)
        return cache if tokens else None

    with torch.inference_mode():
        rows = [Row(prefilled(p), n) for p, n in zip(pasts, news, strict=True)]
        logits, caches = forward_rows(model, rows, "cpu")
        for i, (p, n) in enumerate(zip(pasts, news, strict=True)):
            alone = transformers.DynamicCache(config=model.config)
            out = model(input_ids=torch.tensor([p + n]), past_key_values=alone, use_cache=True)
            torch.testing.assert_close(logits[i], out.logits[0, -1], rtol=1e-5, atol=1e-5)
            for mine, ref in zip(caches[i].layers, alone.layers, strict=True):
                assert mine.keys.shape == ref.keys.shape == (1, 2, len(p + n), 16)
                torch.testing.assert_close(mine.keys, ref.keys, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(mine.values, ref.values, rtol=1e-5, atol=1e-5)
