"""Batched forward passes for the `hf` engine: several requests' rows in one padded forward.

Each request keeps its own `DynamicCache`. A batch left-pads those caches to a common length
(zeros, masked out by a 2D attention_mask), right-pads the new tokens (a real token never sees
a later pad: attention is causal), gives every row its own position_ids, runs one forward and
copies each row's grown cache back out, so the batch tensors are freed when the call returns.
Invariant: a row's real tokens attend to exactly the keys its per-request forward would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PAD_TOKEN_ID = 0  # any valid id: pad positions are never attended to by real tokens


@dataclass(frozen=True, slots=True)
class Row:
    """One request's part of a batched forward: its cache (None: empty) and new tokens."""

    cache: Any
    input_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.input_ids:
            raise ValueError("a batched row needs at least one new token")


def supports_batching(config: Any) -> bool:
    """Whether every cache layer of this model is a plain growing `DynamicLayer` (no sliding
    window, no linear attention state), the only layout the padding here is exact for."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def group_rows(lengths: Sequence[int], max_pad_fraction: float = 0.25) -> list[list[int]]:
    """Indices grouped for padded forwards: longest first, a group grows while its padding
    (rows x longest - real tokens) stays within `max_pad_fraction` of the padded total."""
    if not 0.0 <= max_pad_fraction < 1.0:
        raise ValueError("max_pad_fraction must be in [0, 1)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            group = groups[-1]
            width = lengths[group[0]]
            padded = width * (len(group) + 1)
            if padded - (real + lengths[i]) <= max_pad_fraction * padded:
                group.append(i)
                real += lengths[i]
                continue
        groups.append([i])
        real = lengths[i]
    return groups


def forward_rows(model: Any, rows: Sequence[Row], device: str) -> tuple[Any, list[Any]]:
    """One forward over `rows`: the logits of each row's last real token ([rows, vocab]) and
    each row's new `DynamicCache` (its old cache plus its new tokens, nothing padded)."""
    import torch

    past = [_length(row.cache) for row in rows]
    news = [len(row.input_ids) for row in rows]
    width = max(past)
    span = max(news)
    input_ids = torch.full((len(rows), span), PAD_TOKEN_ID, dtype=torch.long)
    positions = torch.empty((len(rows), span), dtype=torch.long)
    mask = torch.ones((len(rows), width + span), dtype=torch.long)
    steps = torch.arange(span)
    for i, row in enumerate(rows):
        input_ids[i, : news[i]] = torch.tensor(row.input_ids, dtype=torch.long)
        positions[i] = past[i] + steps.clamp(max=news[i] - 1)  # pads repeat the last position
        mask[i, : width - past[i]] = 0
    cache = _padded_cache(model.config, [row.cache for row in rows], past, width)
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
    )
    last = torch.tensor([n - 1 for n in news], device=out.logits.device)
    logits = out.logits[torch.arange(len(rows), device=last.device), last]
    caches = [
        _row_cache(
            model.config, row.cache, out.past_key_values, i, (width - past[i], width + news[i])
        )
        for i, row in enumerate(rows)
    ]
    return logits, caches


def _length(cache: Any) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def _padded_cache(config: Any, caches: list[Any], past: list[int], width: int) -> Any:
    """A batched `DynamicCache` with each row's keys/values right-aligned at `width`."""
    from transformers import DynamicCache

    batched: Any = DynamicCache(config=config)
    if width == 0:
        return batched
    donor = caches[past.index(width)]
    for index, layer in enumerate(batched.layers):
        source = donor.layers[index]
        keys = source.keys.new_zeros((len(caches), *source.keys.shape[1:]))
        values = source.values.new_zeros((len(caches), *source.values.shape[1:]))
        for row, cache in enumerate(caches):
            if past[row]:
                keys[row, :, width - past[row] :] = cache.layers[index].keys[0]
                values[row, :, width - past[row] :] = cache.layers[index].values[0]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return batched


def _row_cache(config: Any, cache: Any, batched: Any, row: int, span: tuple[int, int]) -> Any:
    """Row `row`'s real positions `span` of a batched cache, copied into `cache` (the row's own
    `DynamicCache`, its layers' tensors replaced; None: a new one)."""
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=config)
    start, stop = span
    for layer, source in zip(cache.layers, batched.layers, strict=True):
        keys = source.keys[row : row + 1, :, start:stop].clone()
        values = source.values[row : row + 1, :, start:stop].clone()
        if not layer.is_initialized:
            layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache
