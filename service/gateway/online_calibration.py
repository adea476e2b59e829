"""The gateway's side of online recalibration (issue 13): predict through the calibrator, feed
it every finished request, publish its state, keep it across restarts.

`OnlineFeedback.create` wraps the length predictor in `predictors.online.OnlinePredictor`
(unless `--no-online-calibration` or no predictor). The gateway then calls `note` when it gives
a request the predictor's interval, `finish` when the request ends, and `forget` when a request
is closed. Only requests whose interval is exactly the predictor's are fed (a `length_hint`,
`min_tokens` or `ignore_eos` that changed it would teach the calibrator about someone else's
interval); finish reason `stop` gives the true length, `length` a censored one (see
predictors/online.py for the rule); aborted and failed requests say nothing. With
`--online-calibration-state PATH` the state is loaded at start (a state made for another model
or other budgets is set aside with a warning; a file that is not a calibrator state stops the
start), saved every SAVE_EVERY fed completions from a background thread, and at shutdown.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from predictors.base import IntervalPredictor
from predictors.online import (
    OnlineCalibrator,
    OnlinePredictor,
    StateMismatchError,
    budgets_of,
    write_state,
)
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger("kvsched.online_calibration")
SAVE_EVERY: Final = 100  # fed completions between two saves of the state file
MAX_NOTED: Final = 1 << 17  # intervals remembered for unfinished requests (oldest dropped)


def _fingerprint(settings: Settings, predictor: IntervalPredictor) -> str:
    """sha256 of the model file the predictor came from, else the predictor's class name."""
    path: Path | None = None
    if settings.predictor == "default":
        from predictors.default import DEFAULT_MODEL_PATH

        path = DEFAULT_MODEL_PATH
    elif settings.predictor != "none":
        path = Path(settings.predictor)
    if path is not None and path.is_file():
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return type(predictor).__qualname__


class OnlineFeedback:
    """Calibrator, its metrics and its state file; every method is a no-op when disabled."""

    def __init__(
        self,
        predictor: IntervalPredictor | None,
        online: OnlinePredictor | None,
        metrics: Metrics,
        state_path: Path | None = None,
    ) -> None:
        self.predictor = online if online is not None else predictor
        self.online = online
        self.metrics = metrics
        self.state_path = state_path
        self._issued: dict[str, tuple[int, int]] = {}
        self._since_save = 0
        self._saver: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        if online is not None:
            metrics.observe_online_calibration(online.calibrator.summary())

    @classmethod
    def create(
        cls, settings: Settings, predictor: IntervalPredictor | None, metrics: Metrics
    ) -> OnlineFeedback:
        if predictor is None or not settings.online_calibration:
            return cls(predictor, None, metrics)
        d_lo, d_hi = budgets_of(predictor)
        calibrator = OnlineCalibrator(
            d_lo,
            d_hi,
            step=settings.online_calibration_step,
            fingerprint=_fingerprint(settings, predictor),
        )
        path = settings.online_calibration_state
        if path is not None:
            try:
                if calibrator.load(path):
                    logger.info("online calibration resumed from %s", path)
            except StateMismatchError as exc:
                logger.warning("online calibration starts afresh: %s (will be overwritten)", exc)
        return cls(predictor, OnlinePredictor(predictor, calibrator), metrics, path)

    @property
    def enabled(self) -> bool:
        return self.online is not None

    def note(
        self, request_id: str, predicted: tuple[int, int] | None, issued: tuple[int, int]
    ) -> None:
        """Remember a request's interval if it is exactly the (recalibrated) prediction."""
        if self.online is not None and predicted is not None and predicted == issued:
            if len(self._issued) >= MAX_NOTED:  # a request that never finished nor closed
                self._issued.pop(next(iter(self._issued)))
            self._issued[request_id] = issued

    def forget(self, request_id: str) -> None:
        self._issued.pop(request_id, None)

    def finish(self, request_id: str, reason: str | None, num_output_tokens: int) -> None:
        """Feed a finished request ("stop": exact length; "length": censored; else nothing)."""
        noted = self._issued.pop(request_id, None)
        if self.online is None or noted is None or reason not in ("stop", "length"):
            return
        lo, hi = noted
        censored = reason == "length"
        try:
            self.online.observe(lo, hi, num_output_tokens, censored=censored)
        except ValueError:
            logger.warning("online calibration skipped request %s", request_id, exc_info=True)
            return
        calibrator = self.online.calibrator
        self.metrics.observe_online_calibration(calibrator.summary(), censored=censored)
        self._since_save += 1
        if self.state_path is not None and self._since_save >= SAVE_EVERY:
            self._save_in_background()

    def _save_in_background(self) -> None:
        assert self.online is not None and self.state_path is not None
        self._since_save = 0
        if self._saver is None:  # one thread: saves land in the order they were asked for
            self._saver = ThreadPoolExecutor(1, thread_name_prefix="kvsched-calibrator")
        snapshot = self.online.calibrator.to_json()
        self._pending = self._saver.submit(self._write, self.state_path, snapshot)

    @staticmethod
    def _write(path: Path, snapshot: dict[str, object]) -> None:
        try:
            write_state(path, snapshot)
        except OSError:
            logger.exception("cannot save the online calibration state to %s", path)

    def close(self) -> None:
        """Save the state one last time (synchronously) and stop the saving thread."""
        if self._saver is not None:
            self._saver.shutdown(wait=True)
            self._saver = None
        if self.online is not None and self.state_path is not None:
            self._write(self.state_path, self.online.calibrator.to_json())
