"""Stop strings over a stream of text deltas, checked once at the gateway for every engine.

A stop string may arrive split over several deltas, so the matcher holds back the last
(longest stop string - 1) characters until the next delta shows whether they begin a stop
string. On a match the output ends just before the stop string (which is not returned, as in
OpenAI's API and vLLM's default) and the request finishes with reason "stop". When the request
ends for another reason, the held-back text is released.
"""

from __future__ import annotations


class StopMatcher:
    """Cuts a text stream at the first occurrence of any of `stop`."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that can be sent now, and whether a stop string ended the output."""
        if not self.stop:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        cut = max(0, len(buffer) - self._hold)
        self._held = buffer[cut:]
        return buffer[:cut], False

    def flush(self) -> str:
        """The held-back text, when the output ends without a stop string."""
        held, self._held = self._held, ""
        return held
