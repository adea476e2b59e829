"""The `hf` engine: a Hugging Face causal LM from a local directory, on CUDA if present, else CPU.

Runs the loop's batches (issue 4): each request has its own `DynamicCache`; per iteration all
decoding rows run as one padded forward and prefill chunks as padded groups of similar length
(`_hf_batch`); `batch=False` keeps one forward per row (the reference, same greedy tokens).
When a request is (re)admitted, its row's `resumed` k says how many of its output tokens to
keep: the engine drops the rest and its cache, prefills prompt + those k tokens and continues
with token k + 1 (resume preemption, a failover resubmission that came with k tokens); k = 0
restarts from scratch (restart preemption) and regenerates the same tokens: greedy, or sampled
with randomness fixed by the request's seed and the token's position (`_sample`). Never
downloads.

KV hand-over (prefill/decode worker roles): a prefill worker's `export_kv` copies a request's
cache (prompt + output - 1 positions) to host arrays (`ipc.KVHandover`); a decode worker's
`import_kv` installs them as the request's cache, and its admission then computes nothing of
the prompt: the row's last prefill chunk runs as one decode step of the last output token on
that cache. An eviction drops an imported cache like any other (the re-admission prefills).
`prefill_tokens_computed` counts the tokens this engine ran through prefill forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.loop import StepResult
from service.engines._hf_batch import Row, forward_rows, group_rows, supports_batching
from service.protocol import GenerationRequest
from service.settings import Settings
from service.worker.ipc import KVHandover

DEFAULT_KV_TOKENS: Final = 16_384


def model_dir(settings: Settings) -> Path:
    """`settings.model` as an existing local directory (ValueError otherwise: no downloads)."""
    if not settings.model:
        raise ValueError("engine 'hf' needs --model, a local Hugging Face model directory")
    path = Path(settings.model)
    if not path.is_dir():
        raise ValueError(f"model {settings.model!r} is not a local directory (hf never downloads)")
    return path


class HFTokenizer:
    """Adapts a transformers tokenizer to `service.engines.base.Tokenizer`.

    `encode` adds the model's special tokens (BOS for Llama-style tokenizers), as vLLM does for
    /v1/completions prompts; `decode` skips special tokens, so EOS renders as "".
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_token_id: int | None = None if eos is None else int(eos)
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text, add_special_tokens=True)]

    def decode(self, token_ids: list[int]) -> str:
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=True))


def load_tokenizer(settings: Settings) -> HFTokenizer:
    """The tokenizer saved in the model directory."""
    from transformers import AutoTokenizer

    path = model_dir(settings)
    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


@dataclass(slots=True)
class _Sequence:
    """One request's state in the engine: its KV cache, its output so far (the tokens it came
    with included) and, while prefilling, the context it prefills (prompt + kept output)."""

    request: GenerationRequest
    cache: Any = None
    output: list[int] = field(default_factory=list)
    reason: str = "length"
    context: tuple[int, ...] = ()
    imported: Any = None  # a handed-over cache, used at its (first) admission

    def admit(self, resumed: int) -> None:
        """A (re)admission: keep the first `resumed` output tokens, drop the rest and the KV."""
        if resumed > len(self.output):
            raise RuntimeError(
                f"request {self.request.request_id!r} resumes after {resumed} output tokens,"
                f" it has {len(self.output)}"
            )
        del self.output[resumed:]
        self.cache = None
        self.imported = None
        self.reason = "length"
        self.context = self.request.prompt_token_ids + tuple(self.output)


class HFEngine:
    """Implements `Engine` for a local causal LM.

    `kv_capacity_tokens` (settings.kv_tokens, default DEFAULT_KV_TOKENS) is the scheduling
    budget the loop plans with, not measured device memory. `max_model_len` is settings'
    limited by the model's `max_position_embeddings`. `execute` reports measured wall time.
    EOS ends a request unless `ignore_eos`; below `min_tokens` the EOS logits are masked.
    `batch=False` (or a model with sliding-window/linear cache layers) runs one forward per row.
    """

    name: str = "hf"

    def __init__(
        self, settings: Settings, worker_id: int, *, device: str | None = None, batch: bool = True
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.worker_id = worker_id
        if device is None:
            count = torch.cuda.device_count()
            device = f"cuda:{worker_id % count}" if count else "cpu"
        self.device = device
        dtype: Any = torch.float32 if device == "cpu" else "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir(settings), local_files_only=True, dtype=dtype
        )
        self.model = model.to(device).eval()
        self.eos_token_ids = _eos_ids(self.model)
        self.kv_capacity_tokens = settings.kv_tokens or DEFAULT_KV_TOKENS
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_model_len = min(settings.max_model_len, max_positions or settings.max_model_len)
        self.batched = batch and supports_batching(self.model.config)
        self._sequences: dict[int, _Sequence] = {}
        self.exportable = supports_batching(self.model.config)  # plain layers: KV can move
        self.prefill_tokens_computed = 0

    def add(self, loop_id: int, request: GenerationRequest) -> None:
        self._sequences[loop_id] = _Sequence(request, output=list(request.output_token_ids))

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        """Runs the batch's forwards; the result carries each producing row's token and each
        finished request's reason ("stop": EOS, "length": max_tokens)."""
        import torch

        started = time.perf_counter()
        rows: list[tuple[int, tuple[int, ...]]] = []  # (row j, new tokens) of rows that run
        for j in range(len(batch)):
            chunk = int(prefill_tokens[j])
            if chunk == 0 and not produces[j]:
                continue  # waits for its turn to prefill (chunked prefill)
            sequence = self._sequences[int(batch.ids[j])]
            first = chunk > 0 and batch.prefill_left[j] == batch.prompt_tokens[j]
            if chunk and sequence.imported is not None:
                if not first or int(batch.resumed[j]) == len(sequence.output):
                    if produces[j]:  # its KV came from a prefill worker: one decode step
                        sequence.cache, sequence.imported = sequence.imported, None
                        rows.append((j, (sequence.output[-1],)))
                    continue
                sequence.imported = None  # resumes elsewhere than handed over: prefill it
            if first:
                sequence.admit(int(batch.resumed[j]))  # its first prefill chunk
            rows.append((j, self._inputs(sequence, chunk, int(batch.prefill_left[j]))))
            self.prefill_tokens_computed += chunk
        with torch.inference_mode():
            forward = self._forward_batched if self.batched else self._forward_each
            logits = forward(batch, rows)
            chosen = [j for j, _ in rows if produces[j]]
            tokens, finished = self._choose(batch, chosen, [logits[j] for j in chosen])
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        reasons = {i: self._sequences[i].reason for i in finished}
        return StepResult(time.perf_counter() - started, finished, tokens, reasons)

    def _inputs(self, sequence: _Sequence, chunk: int, prefill_left: int) -> tuple[int, ...]:
        """The tokens to feed: the next chunk of prompt + kept output, or the last output token."""
        if chunk > 0:
            offset = len(sequence.context) - prefill_left
            if offset < 0:
                raise RuntimeError(
                    f"request {sequence.request.request_id!r}: {prefill_left} tokens left to"
                    f" prefill of a context of {len(sequence.context)}"
                )
            inputs = sequence.context[offset : offset + chunk]
            if offset + chunk == len(sequence.context):
                sequence.context = ()  # prefilled: decoding feeds output tokens from here on
            return inputs
        if not sequence.output:
            raise RuntimeError(f"request {sequence.request.request_id!r} decodes before prefill")
        return (sequence.output[-1],)

    def _forward(self, sequence: _Sequence, inputs: tuple[int, ...]) -> Any:
        """The per-request path: one forward of `inputs`; the last position's logits."""
        import torch
        from transformers import DynamicCache

        if sequence.cache is None:
            sequence.cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([inputs], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=sequence.cache, use_cache=True)
        sequence.cache = out.past_key_values
        return out.logits[0, -1]

    def _forward_each(
        self, batch: BatchView, rows: list[tuple[int, tuple[int, ...]]]
    ) -> dict[int, Any]:
        """The per-request path (the reference): one forward per row; row -> logits."""
        return {j: self._forward(self._sequences[int(batch.ids[j])], x) for j, x in rows}

    def _forward_batched(
        self, batch: BatchView, rows: list[tuple[int, tuple[int, ...]]]
    ) -> dict[int, Any]:
        """One forward for all one-token rows (decodes), one per group of similar-length
        prefill chunks (`group_rows`); row -> logits."""
        decode = [i for i, (_, inputs) in enumerate(rows) if len(inputs) == 1]
        prefill = [i for i, (_, inputs) in enumerate(rows) if len(inputs) > 1]
        groups = [decode] if decode else []
        groups += [[prefill[k] for k in g] for g in group_rows([len(rows[i][1]) for i in prefill])]
        logits: dict[int, Any] = {}
        for group in groups:
            sequences = [self._sequences[int(batch.ids[rows[i][0]])] for i in group]
            if len(group) == 1:  # padding buys nothing for one row
                logits[rows[group[0]][0]] = self._forward(sequences[0], rows[group[0]][1])
                continue
            padded = [Row(s.cache, rows[i][1]) for s, i in zip(sequences, group, strict=True)]
            group_logits, caches = forward_rows(self.model, padded, self.device)
            for k, (sequence, i) in enumerate(zip(sequences, group, strict=True)):
                sequence.cache = caches[k]
                logits[rows[i][0]] = group_logits[k]
        return logits

    def _choose(
        self, batch: BatchView, chosen: list[int], logits: list[Any]
    ) -> tuple[dict[int, int], tuple[int, ...]]:
        """Next tokens of rows `chosen` (greedy, or sampled: `_sample`); records them and
        returns them (loop id -> token, in row order) and the finished ids. EOS logits are
        masked for requests below `min_tokens`."""
        import torch

        if not chosen:
            return {}, ()
        scores = torch.stack(logits)
        sequences = [self._sequences[int(batch.ids[j])] for j in chosen]
        young = [k for k, s in enumerate(sequences) if len(s.output) < s.request.min_tokens]
        if young and self.eos_token_ids:
            eos = torch.tensor(sorted(self.eos_token_ids), device=scores.device)
            scores[torch.tensor(young, device=scores.device).unsqueeze(1), eos] = float("-inf")
        tokens = scores.argmax(-1).tolist()
        for k, sequence in enumerate(sequences):
            if sequence.request.temperature > 0:
                tokens[k] = _sample(scores[k], sequence.request, len(sequence.output))
        produced: dict[int, int] = {}
        finished: list[int] = []
        for j, sequence, token in zip(chosen, sequences, tokens, strict=True):
            loop_id = int(batch.ids[j])
            produced[loop_id] = token
            if self._append(sequence, token):
                finished.append(loop_id)
        return produced, tuple(finished)

    def _append(self, sequence: _Sequence, token: int) -> bool:
        """Record a produced token; whether it ends the request (EOS or max_tokens)."""
        sequence.output.append(token)
        if token in self.eos_token_ids and not sequence.request.ignore_eos:
            sequence.reason = "stop"
            return True
        return len(sequence.output) >= sequence.request.max_tokens

    def export_kv(self, loop_id: int) -> KVHandover | None:
        """The request's cache as host arrays (None: no cache, or a model whose cache layers
        are not plain growing ones)."""
        import torch

        sequence = self._sequences.get(loop_id)
        if sequence is None or sequence.cache is None or not self.exportable:
            return None
        started_s, started = time.time(), time.perf_counter()
        layers = sequence.cache.layers
        dtype = layers[0].keys.dtype
        arrays: list[Any] = []
        for layer in layers:
            for tensor in (layer.keys, layer.values):
                host = tensor.detach().to("cpu").contiguous()
                if dtype in (torch.bfloat16, torch.float16):
                    host = host.view(torch.int16)  # numpy has no bfloat16: ship the raw bits
                arrays.append(host.numpy().copy())
        num_tokens = int(layers[0].keys.shape[-2])
        name = str(dtype).removeprefix("torch.")
        return KVHandover(num_tokens, name, tuple(arrays), started_s, time.perf_counter() - started)

    def import_kv(self, loop_id: int, kv: KVHandover) -> float:
        """Install a handed-over cache for request `loop_id` (added, output = its tokens);
        the seconds it took. ValueError if it does not fit the request."""
        import torch
        from transformers import DynamicCache

        started = time.perf_counter()
        sequence = self._sequences[loop_id]
        expected = len(sequence.request.prompt_token_ids) + len(sequence.output) - 1
        if kv.num_tokens != expected or not sequence.output:
            raise ValueError(
                f"request {sequence.request.request_id!r}: a KV cache of {kv.num_tokens} tokens"
                f" for a context of {expected}"
            )
        dtype = getattr(torch, kv.dtype)
        cache: Any = DynamicCache(config=self.model.config)
        if len(cache.layers) * 2 != len(kv.arrays):
            layers = len(cache.layers)
            raise ValueError(f"a KV cache of {len(kv.arrays)} tensors for {layers} layers")
        for index, layer in enumerate(cache.layers):
            pair = []
            for array in kv.arrays[2 * index : 2 * index + 2]:
                tensor = torch.from_numpy(array)
                if dtype in (torch.bfloat16, torch.float16):
                    tensor = tensor.view(dtype)
                pair.append(tensor.to(self.device))
            layer.lazy_initialization(pair[0], pair[1])
            layer.keys, layer.values = pair[0], pair[1]
        sequence.imported = cache
        return time.perf_counter() - started

    def release(self, loop_id: int, *, forget: bool) -> None:
        """Drop the KV cache; `forget=False` keeps the request (and its output, which its next
        admission's `resumed` trims) for its re-prefill."""
        if forget:
            self._sequences.pop(loop_id, None)
        elif loop_id in self._sequences:
            self._sequences[loop_id].cache = None
            self._sequences[loop_id].imported = None


def _sample(logits: Any, request: GenerationRequest, position: int) -> int:
    """Output token number `position` (0-based) drawn from softmax(logits / temperature)
    restricted to the smallest set of tokens whose probability reaches top_p. The draw depends
    only on (seed, position), so a replay of the request draws the same token."""
    import torch

    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
        sorted_probs[before >= request.top_p] = 0.0  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    generator = torch.Generator(device=probs.device)
    generator.manual_seed((request.seed * 1_000_003 + position) % 2**63)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _eos_ids(model: Any) -> frozenset[int]:
    """EOS ids from the generation config (may list several), else the model config."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset(int(i) for i in (eos if isinstance(eos, list | tuple) else [eos]))


def load_engine(settings: Settings, worker_id: int) -> HFEngine:
    """The worker's engine factory (service.worker.engine_host.load_engine)."""
    return HFEngine(settings, worker_id)
