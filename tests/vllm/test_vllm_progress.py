"""The mirror reads each running request's tokens at the end of schedule() and applies them at
the next (service.vllm_ext.mirror `read_progress`): the read must still be vLLM's truth then.

Checked before every step of every vLLM scenario (pipelined and synchronous engine order,
evictions, aborts, chunked prefill, prefix-cache hits); the report comes from conftest.
"""

from __future__ import annotations

from typing import Any

import pytest

SECTIONS = ("contract", "parity", "abort", "chunked", "prefix")


@pytest.mark.parametrize("section", SECTIONS)
def test_tokens_read_at_step_end_are_current_at_next_step(
    vllm_report: dict[str, Any], section: str
) -> None:
    runs = vllm_report[section]
    assert runs, f"no {section} scenario ran"
    for policy, run in runs.items():
        progress = run["progress"]
        assert progress["stale"] == [], f"{section}/{policy}: stale reads {progress['stale']}"
        # the check saw running requests on many steps (it would pass vacuously otherwise)
        assert progress["rows_checked"] >= 2 * len(run["admitted"]), (section, policy)
