"""The vLLM scheduler's pure parts, in the main environment: views, capacity, configuration."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from algorithms.types import LengthInterval
from service.vllm_ext.config import SchedulerConfigError, load_settings
from service.vllm_ext.views import (
    capacity_tokens,
    interval_from_extra_args,
    shift_interval,
    view_prompt_tokens,
)


@pytest.mark.parametrize("block_size", [1, 2, 16, 32])
def test_view_bounds_the_blocks_vllm_holds(block_size: int) -> None:
    """prompt_view + g + 1 >= whole blocks of p + g tokens, for every p, g (the invariant)."""
    for prompt in range(1, 3 * block_size + 2):
        view = view_prompt_tokens(prompt, block_size)
        for generated in range(0, 3 * block_size):
            held = math.ceil((prompt + generated) / block_size) * block_size
            assert view + generated + 1 >= held, (prompt, generated)
    # and it is tight: some (p, g) reach the bound exactly when blocks are > 1 token
    if block_size > 1:
        prompt = 3
        gen = next(
            g
            for g in range(3 * block_size)
            if math.ceil((prompt + g) / block_size) * block_size
            == view_prompt_tokens(prompt, block_size) + g + 1
        )
        assert gen >= 0


def test_capacity_leaves_out_null_block_watermark_and_groups() -> None:
    assert capacity_tokens(20, 16) == 19 * 16
    assert capacity_tokens(21, 16, num_kv_groups=2) == 10 * 16
    assert capacity_tokens(20, 16, watermark_blocks=3) == 16 * 16
    with pytest.raises(ValueError, match="no usable block"):
        capacity_tokens(1, 16)


def test_interval_from_xargs() -> None:
    assert interval_from_extra_args(None, 50) == (LengthInterval(1, 50), None)
    assert interval_from_extra_args({"kvsched_lo": 5, "kvsched_hi": 20}, 50)[0] == LengthInterval(
        5, 20
    )
    # hi above the hard cap is clipped to it; a float that is an integer is accepted
    assert interval_from_extra_args({"kvsched_lo": 5.0, "kvsched_hi": 90}, 50)[0] == (
        LengthInterval(5, 50)
    )
    for bad, why in (
        ({"kvsched_lo": 9, "kvsched_hi": 3}, "kvsched_lo=9 > kvsched_hi=3"),
        ({"kvsched_lo": "x"}, "kvsched_lo='x' is not an integer"),
        ({"kvsched_hi": 0}, "kvsched_hi=0 must be >= 1"),
        ({"kvsched_hi": True}, "kvsched_hi=True is not an integer"),
    ):
        interval, problem = interval_from_extra_args(bad, 50)
        assert interval == LengthInterval(1, 50) and problem == why


def test_shift_interval_keeps_at_least_one_token() -> None:
    assert shift_interval(LengthInterval(10, 30), 4) == LengthInterval(6, 26)
    assert shift_interval(LengthInterval(10, 30), 40) == LengthInterval(1, 1)


def test_settings_from_env_and_file(tmp_path: Path) -> None:
    assert load_settings({}).policy == "asf"
    config = tmp_path / "sched.json"
    config.write_text('{"policy": "fcfs", "policy_params": {"skip_on_failure": true}}')
    settings = load_settings({"KVSCHED_SCHEDULER_CONFIG": str(config)})
    assert settings.policy == "fcfs" and settings.policy_params == {"skip_on_failure": True}
    env = {"KVSCHED_SCHEDULER_CONFIG": str(config), "KVSCHED_POLICY": "mcsf"}
    assert load_settings(env).policy == "mcsf"
    env = {"KVSCHED_POLICY": "amin", "KVSCHED_POLICY_PARAMS": '{"bound_after_eviction": "g+1"}'}
    assert load_settings(env).policy_params == {"bound_after_eviction": "g+1"}
    assert load_settings({"KVSCHED_POLICY_PARAMS": '{"wait_weight": 4}'}).policy == "asf"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KVSCHED_POLICY": "nope"}, "unknown policy 'nope'"),
        ({"KVSCHED_POLICY": "hsf"}, "needs the true output lengths"),
        ({"KVSCHED_POLICY_PARAMS": '{"colour": 1}'}, "policy 'asf'"),
        ({"KVSCHED_POLICY_PARAMS": "[1]"}, "KVSCHED_POLICY_PARAMS: expected a JSON object"),
        ({"KVSCHED_SCHEDULER_CONFIG": "/no/such/file"}, "cannot read"),
    ],
)
def test_bad_settings_fail_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SchedulerConfigError, match=message) as info:
        load_settings(env)
    assert "\n" not in str(info.value)


def test_bad_config_file_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "sched.json"
    config.write_text('{\n "policy": "fcfs",\n "policy_params": {,}\n}')
    with pytest.raises(SchedulerConfigError, match=r"sched.json: line 3: "):
        load_settings({"KVSCHED_SCHEDULER_CONFIG": str(config)})
    config.write_text('{"policy": "fcfs", "extra": 1}')
    with pytest.raises(SchedulerConfigError, match=r"unknown keys \['extra'\]"):
        load_settings({"KVSCHED_SCHEDULER_CONFIG": str(config)})


def test_pure_modules_do_not_import_vllm() -> None:
    """Only scheduler.py and queue.py import vLLM: the rest works in the main environment."""
    code = (
        "import sys, service.vllm_ext, service.vllm_ext.mirror, service.vllm_ext.config; "
        "print('vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
