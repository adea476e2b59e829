"""Run inside the vLLM venv: `kvsched serve --engine vllm`'s engine arguments, resolved by vLLM.

Builds the tiny model, turns Settings into `AsyncEngineArgs` with `service.backends.vllm
.engine_kwargs`, lets vLLM build its engine config (CPU platform) and prints, as JSON, the
scheduler class vLLM will load and the limits it took from our settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from service.backends.vllm import engine_kwargs
from service.settings import Settings
from tests.vllm.vllm_harness import build_model


def main(model_dir: Path) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    build_model(model_dir)
    fields: dict[str, Any] = {
        "engine": "vllm", "model": str(model_dir), "predictor": "none", "kv_tokens": 1000,
        "max_batch_size": 8, "max_model_len": 128,
    }  # fmt: skip
    settings = Settings(**fields)
    config = AsyncEngineArgs(**engine_kwargs(settings)).create_engine_config()
    cls = config.scheduler_config.get_scheduler_cls()
    report = {
        "scheduler_cls": f"{cls.__module__}.{cls.__qualname__}",
        "num_gpu_blocks_override": config.cache_config.num_gpu_blocks_override,
        "block_size": config.cache_config.block_size,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_model_len": config.model_config.max_model_len,
        "cpu": current_platform.is_cpu(),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
