"""The completion log (issue 3, "learning from the service"): one JSON line per finished request.

Lines are the canonical JSONL layout of `predictors.datasets.load_samples`, so operators retrain
with `kvsched predictor train --data LOG`. Only requests that finished ("stop" or "length") are
logged; a "length" row's `output_tokens` is max_tokens, a lower bound of the true length. Each
line is written and flushed whole (a few microseconds); a failing disk never fails a request.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import IO, Protocol

from service.protocol import FinishReason, GenerationRequest

logger = logging.getLogger("kvsched.completion_log")
LOGGED_REASONS = frozenset({"stop", "length"})


class FinishedJob(Protocol):
    """What the log reads of a finished request (the gateway's `Job` is one)."""

    @property
    def request(self) -> GenerationRequest: ...
    @property
    def prompt(self) -> str: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> FinishReason | None: ...


class CompletionLog:
    """Append-only JSONL writer (a no-op when `path` is None); opened on first use."""

    def __init__(self, path: Path | None, model: str) -> None:
        self.path = path
        self.model = model
        self.num_written = 0
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self._failed = False

    def record(self, job: FinishedJob) -> None:
        """Append the job's line if it finished ("stop"/"length") with output tokens."""
        request, num_output_tokens = job.request, job.num_output_tokens
        if self.path is None or job.finish_reason not in LOGGED_REASONS or num_output_tokens < 1:
            return
        row = {
            "prompt": job.prompt,
            "prompt_tokens": len(request.prompt_token_ids),
            "model": self.model,
            "output_tokens": num_output_tokens,
            "ts": round(request.arrival_s, 6),
            "lo": request.lo,
            "hi": request.hi,
            "max_tokens": request.max_tokens,
            "finish_reason": job.finish_reason,
        }
        self._write(json.dumps(row, ensure_ascii=False) + "\n")

    def _write(self, line: str) -> None:
        assert self.path is not None
        with self._lock:
            try:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()
                self.num_written += 1
            except OSError:
                if not self._failed:  # say it once, not per request
                    logger.exception("cannot write the completion log %s", self.path)
                self._failed = True

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
