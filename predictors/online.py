"""Online recalibration of output-length intervals: one step-size rule per side (issue 13).

Split conformal calibration holds only while served traffic looks like the calibration set.
`OnlineCalibrator` keeps, per side, a log-space adjustment that widens or narrows whatever
interval the model gives, and moves it after every finished request by the quantile-tracking
form of adaptive conformal inference (ACI, Gibbs & Candes; online gradient steps on the pinball
loss): delta_side += step * (miss_side - d_side). Each side's long-run miss rate then tends to
its budget d_side for any sequence of lengths (the error of the running mean is at most
(range of delta + step) / (step * n)), so coverage recovers without retraining.

Applied to a predicted interval [lo, hi] (the model's own, before any cap):
    lo' = ceil(expm1(log1p(lo) - delta_lo)),  hi' = floor(expm1(log1p(hi) + delta_hi)),
then 1 <= lo' <= hi' <= max_tokens. delta = 0 gives back the model's interval.

Censoring. Coverage is of the served length, min(true length, max_tokens): what the request
really occupies, and what `kvsched predictor eval` measures. A request that finished with
reason `length` after t tokens only says true length >= t:
  * below lo: covered when t >= lo (always so at t = max_tokens >= lo); never counted a miss;
    when t < lo (cut by some other limit) the side is unknown and not updated;
  * above hi: a miss when t > hi (true length >= t > hi, proven); covered when t = hi (hi was
    the cap the request ran into: the room reserved for it was enough); unknown when t < hi.
Unknown sides leave the adjustment and the running coverage alone and are counted.

Invariants: state is O(window) (two fixed-size bit rings + a few numbers), updates are
deterministic (same observations in the same order give the same state), and |delta| <= bound.
`save` writes JSON atomically (temp file + rename); `load` restores it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from predictors.base import IntArray, IntervalPredictor, PromptBatch
from predictors.conformal import to_interval

FloatArray = NDArray[np.float64]
STATE_FORMAT: Final = "kvsched-online-calibrator"
STATE_VERSION: Final = 1
DEFAULT_STEP: Final = 0.2  # log space; a miss moves its side's bound by ~e^0.19 = 1.21x
DEFAULT_WINDOW: Final = 200  # completions in the running coverage
DEFAULT_BOUND: Final = 4.0  # |delta| <= 4: bounds move at most e^4 = 55x from the model's
UNCAPPED: Final = 1 << 40  # max_tokens given to the wrapped model: its raw interval, uncapped

Outcome = Literal["covered", "miss", "unknown"]


class StateMismatchError(ValueError):
    """A saved state of this format, made for another model or other miss budgets."""


def budgets_of(predictor: object) -> tuple[float, float]:
    """(d_lo, d_hi) a predictor promises (its `d_lo` / `d_hi`; 5% + 5% when it does not say)."""
    d_lo, d_hi = getattr(predictor, "d_lo", 0.05), getattr(predictor, "d_hi", 0.05)
    return float(d_lo), float(d_hi)


def write_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` as JSON atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(state, out, indent=1)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class Observation:
    """What one finished request said about each side of its interval."""

    below_lo: Outcome
    above_hi: Outcome


def judge(lo: int, hi: int, tokens: int, *, censored: bool) -> Observation:
    """The module's censoring rule: `tokens` generated, `censored` = finished by a limit
    (reason `length`: true length >= tokens), else the true length is `tokens`."""
    if not (1 <= lo <= hi) or tokens < 0:
        raise ValueError(f"bad observation: lo {lo}, hi {hi}, tokens {tokens}")
    if not censored:
        below: Outcome = "miss" if tokens < lo else "covered"
        above: Outcome = "miss" if tokens > hi else "covered"
        return Observation(below, above)
    below = "covered" if tokens >= lo else "unknown"
    above = "miss" if tokens > hi else ("covered" if tokens == hi else "unknown")
    return Observation(below, above)


class _Side:
    """One side's adjustment, counts and running window of miss bits."""

    __slots__ = ("budget", "delta", "observed", "misses", "unknown", "recent")

    def __init__(self, budget: float, window: int) -> None:
        self.budget = budget
        self.delta = 0.0
        self.observed = 0
        self.misses = 0
        self.unknown = 0
        self.recent: deque[bool] = deque(maxlen=window)

    def update(self, outcome: Outcome, step: float, bound: float) -> None:
        if outcome == "unknown":
            self.unknown += 1
            return
        miss = outcome == "miss"
        self.observed += 1
        self.misses += miss
        self.recent.append(miss)
        self.delta = min(bound, max(-bound, self.delta + step * (miss - self.budget)))

    def running_coverage(self) -> float | None:
        """1 - miss rate over the last `window` decided observations (None before any)."""
        return 1.0 - sum(self.recent) / len(self.recent) if self.recent else None

    def to_json(self) -> dict[str, Any]:
        bits = "".join("1" if b else "0" for b in self.recent)
        return {
            "delta": self.delta,
            "observed": self.observed,
            "misses": self.misses,
            "unknown": self.unknown,
            "recent": bits,
        }

    def restore(self, data: dict[str, Any], bound: float) -> None:
        delta = float(data["delta"])
        counts = [int(data[k]) for k in ("observed", "misses", "unknown")]
        bits = str(data["recent"])
        if not (math.isfinite(delta) and abs(delta) <= bound) or min(counts) < 0:
            raise ValueError("delta out of bounds or negative counts")
        if set(bits) - {"0", "1"} or counts[1] > counts[0]:
            raise ValueError("bad running window or more misses than observations")
        self.delta = delta
        self.observed, self.misses, self.unknown = counts
        self.recent.clear()
        self.recent.extend(b == "1" for b in bits[-(self.recent.maxlen or 0) :])


class OnlineCalibrator:
    """Per-side online adjustment of interval bounds (see the module docstring).

    d_lo / d_hi: the miss budgets the model promises below lo and above hi (its split-conformal
    budgets); step: ACI step size in log1p space; window: completions in the running coverage;
    bound: the largest |delta|. `fingerprint` names the model the state belongs to (a saved
    state is only restored onto the same model).
    """

    def __init__(
        self,
        d_lo: float,
        d_hi: float,
        *,
        step: float = DEFAULT_STEP,
        window: int = DEFAULT_WINDOW,
        bound: float = DEFAULT_BOUND,
        fingerprint: str = "",
    ) -> None:
        if not (0.0 < d_lo < 0.5 and 0.0 < d_hi < 0.5):
            raise ValueError(f"miss budgets must be in (0, 0.5): d_lo={d_lo}, d_hi={d_hi}")
        if not (0.0 < step <= 1.0) or window < 1 or not (0.0 < bound <= 20.0):
            raise ValueError(f"need 0 < step <= 1, window >= 1, 0 < bound <= 20: {step=}")
        self.step = step
        self.window = window
        self.bound = bound
        self.fingerprint = fingerprint
        self.lo = _Side(d_lo, window)
        self.hi = _Side(d_hi, window)
        self.censored = 0

    @property
    def d_lo(self) -> float:
        return self.lo.budget

    @property
    def d_hi(self) -> float:
        return self.hi.budget

    @property
    def deltas(self) -> tuple[float, float]:
        """(delta_lo, delta_hi): log1p-space widening of each side (negative = narrower)."""
        return self.lo.delta, self.hi.delta

    @property
    def num_observed(self) -> int:
        """Finished requests fed in (each side may have been unknown for some)."""
        return max(self.lo.observed + self.lo.unknown, self.hi.observed + self.hi.unknown)

    def apply(self, lo: IntArray, hi: IntArray, max_tokens: IntArray) -> tuple[IntArray, IntArray]:
        """The current adjustment applied to model intervals (uncapped), capped at max_tokens."""
        lo_f = np.expm1(np.log1p(lo.astype(np.float64)) - self.lo.delta)
        hi_f = np.expm1(np.log1p(hi.astype(np.float64)) + self.hi.delta)
        return to_interval(lo_f, hi_f, np.asarray(max_tokens, dtype=np.int64))

    def observe(self, lo: int, hi: int, tokens: int, *, censored: bool) -> Observation:
        """Feed one finished request: the interval it was given (after `apply`), the tokens it
        generated, and whether it was cut by a limit (finish reason `length`)."""
        seen = judge(lo, hi, tokens, censored=censored)
        self.censored += censored
        self.lo.update(seen.below_lo, self.step, self.bound)
        self.hi.update(seen.above_hi, self.step, self.bound)
        return seen

    def running_coverage(self) -> tuple[float | None, float | None]:
        """(1 - P(y < lo), 1 - P(y > hi)) over each side's last `window` decided requests."""
        return self.lo.running_coverage(), self.hi.running_coverage()

    def summary(self) -> dict[str, Any]:
        cov_lo, cov_hi = self.running_coverage()
        return {
            "delta_lo": self.lo.delta,
            "delta_hi": self.hi.delta,
            "observed": self.num_observed,
            "censored": self.censored,
            "running_coverage_lo": cov_lo,
            "running_coverage_hi": cov_hi,
            "misses_below_lo": self.lo.misses,
            "misses_above_hi": self.hi.misses,
            "unknown_lo": self.lo.unknown,
            "unknown_hi": self.hi.unknown,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "d_lo": self.d_lo,
            "d_hi": self.d_hi,
            "step": self.step,
            "window": self.window,
            "bound": self.bound,
            "censored": self.censored,
            "lo": self.lo.to_json(),
            "hi": self.hi.to_json(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Take over a saved state's adjustments and counts (ValueError if malformed or made
        for other budgets or another model; the step and window stay this calibrator's)."""
        try:
            if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
                raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} state")
            if (float(data["d_lo"]), float(data["d_hi"])) != (self.d_lo, self.d_hi):
                raise StateMismatchError(
                    f"made for budgets d_lo {data['d_lo']}, d_hi {data['d_hi']}, "
                    f"not {self.d_lo}, {self.d_hi}"
                )
            if str(data["fingerprint"]) != self.fingerprint:
                raise StateMismatchError("made for another model")
            censored = int(data["censored"])
            if censored < 0:
                raise ValueError("negative censored count")
            self.lo.restore(data["lo"], self.bound)
            self.hi.restore(data["hi"], self.bound)
            self.censored = censored
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed state ({type(exc).__name__}: {exc})") from exc

    def save(self, path: str | Path) -> None:
        """Write the state as JSON atomically: a reader sees the old file or the new one."""
        write_state(path, self.to_json())

    def load(self, path: str | Path) -> bool:
        """Restore from `path`; False when there is no file. ValueError (naming the file) for
        a file that is not a state of this calibrator's model and budgets: StateMismatchError
        when it is one, made for another model or other budgets)."""
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ValueError(f"{target}: cannot read the calibrator state: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            self.restore(data)
        except StateMismatchError as exc:
            raise StateMismatchError(f"{target}: {exc}") from exc
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{target}: {str(exc).splitlines()[0]}") from exc
        return True


class OnlinePredictor:
    """Implements `IntervalPredictor`: `base`'s intervals, adjusted by `calibrator`.

    The base model is asked for its raw interval (max_tokens = UNCAPPED) so that the adjustment
    acts on the model's bounds, not on a cap; the request's max_tokens is applied after.
    `refine` is the base model's. Feed finished requests with `observe`.
    """

    def __init__(self, base: IntervalPredictor, calibrator: OnlineCalibrator) -> None:
        self.base = base
        self.calibrator = calibrator

    def base_intervals(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        """The base model's uncapped intervals for `batch` (independent of the calibrator)."""
        uncapped = np.full(len(batch), UNCAPPED, dtype=np.int64)
        raw = PromptBatch(batch.prompts, batch.prompt_tokens, batch.models, uncapped)
        return self.base.predict(raw)

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        lo, hi = self.base_intervals(batch)
        return self.calibrator.apply(lo, hi, batch.max_tokens)

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        return self.base.refine(lo, hi, generated, max_tokens)

    def observe(self, lo: int, hi: int, tokens: int, *, censored: bool) -> Observation:
        return self.calibrator.observe(lo, hi, tokens, censored=censored)


def replay(
    calibrator: OnlineCalibrator,
    base_lo: IntArray,
    base_hi: IntArray,
    output_tokens: IntArray,
    max_tokens: IntArray,
) -> tuple[IntArray, IntArray]:
    """Serve a stream in order: request i gets the calibrator's interval, then its completion
    (served length min(y, max_tokens); censored when y >= max_tokens) updates the calibrator
    before request i + 1 is predicted. Returns the intervals the requests were given."""
    n = len(output_tokens)
    lo_out = np.empty(n, dtype=np.int64)
    hi_out = np.empty(n, dtype=np.int64)
    caps = np.asarray(max_tokens, dtype=np.int64)
    for i in range(n):
        cap = caps[i : i + 1]
        lo_i, hi_i = calibrator.apply(base_lo[i : i + 1], base_hi[i : i + 1], cap)
        lo_out[i], hi_out[i] = lo_i[0], hi_i[0]
        y = int(output_tokens[i])
        calibrator.observe(
            int(lo_i[0]), int(hi_i[0]), min(y, int(cap[0])), censored=y >= int(cap[0])
        )
    return lo_out, hi_out


@dataclass(frozen=True, slots=True)
class OnlineIntervals:
    """A stream's model intervals (uncapped) and caps, to be served through a fresh
    `OnlineCalibrator` per run: what the simulator uses so that it runs serving's calibrator."""

    base_lo: IntArray
    base_hi: IntArray
    max_tokens: IntArray
    d_lo: float
    d_hi: float
    step: float = DEFAULT_STEP

    def calibrator(self) -> OnlineCalibrator:
        return OnlineCalibrator(self.d_lo, self.d_hi, step=self.step)

    def interval(self, calibrator: OnlineCalibrator, i: int) -> tuple[int, int]:
        """Request i's interval under the calibrator's current adjustment."""
        row = slice(i, i + 1)
        lo, hi = calibrator.apply(self.base_lo[row], self.base_hi[row], self.max_tokens[row])
        return int(lo[0]), int(hi[0])

    @classmethod
    def predict(
        cls, predictor: IntervalPredictor, batch: PromptBatch, step: float = DEFAULT_STEP
    ) -> OnlineIntervals:
        """The base intervals of `batch` from `predictor` (its budgets), capped per request."""
        online = OnlinePredictor(predictor, OnlineCalibrator(*budgets_of(predictor), step=step))
        lo, hi = online.base_intervals(batch)
        return cls(lo, hi, batch.max_tokens.copy(), *budgets_of(predictor), step)
