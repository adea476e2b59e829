"""XProfiler's fitting half (docs/planner.md, "Profiling"): timed iterations -> a `CostModel`.

Each `ProfileSample` is one engine iteration with the load the simulator charges for it
(prefill tokens, decoding requests, KV tokens held: as `SimulatedExecutor` counts them). The fit
is non-negative least squares on relative error, so every coefficient is >= 0 and short decode
iterations weigh as much as long prefills. The profile file is a `load_cost_model` profile; the
samples and the fit error ride along as `# sample = [...]` comment lines (`read_samples`).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import nnls

from simulator.cost_model import CostModel

PHASES: Final = ("prefill", "decode")
SAMPLE_PREFIX: Final = "# sample = "
SAMPLE_COLUMNS: Final = (
    "phase",
    "tp",
    "batch_size",
    "seq_tokens",
    "prefill_tokens",
    "num_decode",
    "kv_tokens",
    "measured_ms",
    "fitted_ms",
)
MIN_SAMPLES: Final = 4  # one per coefficient


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class ProfileSample:
    """One timed iteration. `seq_tokens`: prompt length (prefill) or context length (decode)."""

    phase: str
    tp: int
    batch_size: int
    seq_tokens: int
    prefill_tokens: int
    num_decode: int
    kv_tokens: int
    measured_ms: float

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        for name in ("tp", "batch_size", "seq_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("prefill_tokens", "num_decode", "kv_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        ms = self.measured_ms
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
            raise ValueError(f"measured_ms must be a finite number, got {ms!r}")
        if ms <= 0:
            raise ValueError(f"measured_ms must be > 0, got {ms!r}")


@dataclass(frozen=True, slots=True)
class ProfileGrid:
    """Batch sizes x sequence lengths; each cell is one prefill then `decode_steps` decodes.

    Every iteration runs `repeats` times and the median is kept; `warmup` untimed passes of
    the first cell go first (lazy initialisation, caches).
    """

    batch_sizes: tuple[int, ...]
    seq_tokens: tuple[int, ...]
    decode_steps: int = 4
    repeats: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seq_tokens"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must not be empty")
            for value in values:
                _positive_int(name, value)
        _positive_int("decode_steps", self.decode_steps)
        _positive_int("repeats", self.repeats)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")

    @classmethod
    def parse(cls, text: str, **options: int) -> ProfileGrid:
        """`"1,2,4x64,256"`: batch sizes x sequence lengths; `options` are the other fields."""
        batches, sep, lengths = text.partition("x")
        try:
            if not sep:
                raise ValueError
            sizes = tuple(int(v) for v in batches.split(","))
            seqs = tuple(int(v) for v in lengths.split(","))
        except ValueError:
            raise ValueError(
                f"grid {text!r}: expected BATCH_SIZES x SEQ_LENGTHS, e.g. 1,2,4x64,256"
            ) from None
        return cls(sizes, seqs, **options)

    def cells(self) -> list[tuple[int, int]]:
        """(batch_size, seq_tokens) in grid order."""
        return [(b, s) for b in self.batch_sizes for s in self.seq_tokens]


@dataclass(frozen=True, slots=True)
class ProfileFit:
    """The fitted model and how well it explains the samples it came from (R^2 of the times in
    ms, so it can be < 0 when outliers the relative fit discounts dominate the variance)."""

    cost_model: CostModel
    r_squared: float
    max_relative_error: float
    median_relative_error: float
    num_samples: int


def design_matrix(samples: Sequence[ProfileSample]) -> NDArray[np.float64]:
    """Rows [1, prefill_tokens, num_decode, kv_tokens]: the `CostModel` terms in ms."""
    rows = [(1.0, s.prefill_tokens, s.num_decode, s.kv_tokens) for s in samples]
    return np.asarray(rows, dtype=np.float64).reshape(len(samples), 4)


def predict_ms(model: CostModel, samples: Sequence[ProfileSample]) -> NDArray[np.float64]:
    """What `model` says each sample's iteration costs, in ms."""
    coef = np.array(
        [model.base_ms, model.prefill_ms_per_token, model.decode_ms_per_request]
        + [model.kv_ms_per_token]
    )
    return np.asarray(design_matrix(samples) @ coef, dtype=np.float64)


def fit_cost_model(
    samples: Sequence[ProfileSample],
    *,
    name: str,
    kv_capacity_tokens: int,
    description: str = "",
) -> ProfileFit:
    """Non-negative least squares on relative error (rows scaled by 1/measured)."""
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples to fit, got {len(samples)}")
    x = design_matrix(samples)
    y = np.array([s.measured_ms for s in samples], dtype=np.float64)
    weighted = x / y[:, None]
    scale = np.abs(weighted).max(axis=0)
    scale[scale == 0] = 1.0  # a term absent from every sample: its coefficient stays 0
    solution, _ = nnls(weighted / scale, np.ones_like(y))
    coef = solution / scale
    model = CostModel(
        name=name,
        kv_capacity_tokens=kv_capacity_tokens,
        base_ms=float(coef[0]),
        prefill_ms_per_token=float(coef[1]),
        decode_ms_per_request=float(coef[2]),
        kv_ms_per_token=float(coef[3]),
        description=description,
    )
    fitted = x @ coef
    sse = float(((y - fitted) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    r_squared = 1.0 - sse / sst if sst > 0 else float(sse == 0)
    relative = np.abs(fitted - y) / y
    return ProfileFit(
        model, r_squared, float(relative.max()), float(np.median(relative)), len(samples)
    )


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_profile(fit: ProfileFit, samples: Sequence[ProfileSample], *, header: str) -> str:
    """The .toml text: cost-model fields (what `load_cost_model` reads) + commented samples."""
    model = fit.cost_model
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(
        f"# fit: nnls on relative error; R^2 (of ms) = {fit.r_squared:.6f}, relative error "
        f"max = {fit.max_relative_error:.6f}, median = {fit.median_relative_error:.6f}, "
        f"samples = {fit.num_samples}"
    )
    for field, value in model.to_dict().items():
        if field != "unit":
            lines.append(f"{field} = {_toml_value(value)}")
    lines.append(f"# columns: {', '.join(SAMPLE_COLUMNS)}")
    for sample, fitted in zip(samples, predict_ms(model, samples), strict=True):
        values = [getattr(sample, c) for c in SAMPLE_COLUMNS[:-1]] + [round(float(fitted), 6)]
        lines.append(SAMPLE_PREFIX + "[" + ", ".join(_toml_value(v) for v in values) + "]")
    return "\n".join(lines) + "\n"


def read_samples(path: Path) -> list[ProfileSample]:
    """The samples a profile file carries in its `# sample = [...]` lines."""
    samples: list[ProfileSample] = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith(SAMPLE_PREFIX):
            continue
        try:
            row = tomllib.loads(line[2:])["sample"]
            if not isinstance(row, list) or len(row) != len(SAMPLE_COLUMNS):
                raise ValueError(f"expected {len(SAMPLE_COLUMNS)} values")
            samples.append(ProfileSample(*row[:-1]))
        except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"profile {path}, line {number}: bad sample ({exc})") from exc
    return samples
