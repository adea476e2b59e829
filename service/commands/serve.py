"""`kvsched serve`: the OpenAI-compatible server (issue 4) under uvicorn.

Every `Settings` field has a flag (field name with dashes); `KVSCHED_*` environment variables
give the defaults and flags override them. Invalid settings end as one `kvsched: error:` line,
exit 2 (via cli.main). SIGTERM / Ctrl-C: uvicorn stops accepting and drains connections for up
to --shutdown-grace-s, then the app's lifespan stops the worker pool (`Backend.stop`).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic and the web stack load only when `serve` runs
    from service.settings import Settings

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "serve",
        help="serve an OpenAI-compatible API (default: simulated GPU)",
        description="Serve /v1/completions and /v1/chat/completions with KV-cache-aware "
        "scheduling. Flags override KVSCHED_* environment variables.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
    )
    p.add_argument(
        "--engine",
        choices=("sim", "hf", "vllm", "openai-upstream"),
        help="model engine (default sim)",
    )
    p.add_argument("--model", help="local Hugging Face model directory (hf, vllm engines)")
    p.add_argument("--served-model-name", help="model name in /v1/models")
    p.add_argument("--policy", help="batch former (see `kvsched policies`; default asf)")
    p.add_argument(
        "--policy-param",
        dest="policy_params",
        action="append",
        metavar="KEY=VALUE",
        help="batch-former parameter (repeatable)",
    )
    _add_server_flags(p)
    _add_role_flags(p)
    _add_upstream_flags(p)
    p.set_defaults(handler=run_serve)


def _add_upstream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="openai-upstream: base URL of an OpenAI-compatible server (repeatable)",
    )
    p.add_argument(
        "--upstream-kv-tokens",
        type=int,
        help="openai-upstream: KV capacity of each upstream, tokens (default: learned)",
    )
    p.add_argument(
        "--upstream-timeout-s",
        type=float,
        help="openai-upstream: longest silence from an upstream mid-request (default 60)",
    )
    p.add_argument(
        "--upstream-probe-interval-s",
        type=float,
        help="openai-upstream: how often each upstream's /metrics is read (default 1)",
    )
    p.add_argument(
        "--tokenizer", help="openai-upstream: local tokenizer directory (default: Llama-3's)"
    )


def _add_role_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plan",
        type=Path,
        help="a `kvsched plan --json` file: worker roles, counts and batch limits (flags win)",
    )
    p.add_argument(
        "--prefill-workers",
        type=int,
        help="sim engine: workers that only prefill; the rest decode (default 0: all mixed)",
    )
    p.add_argument("--prefill-max-batch-size", type=int, help="max_batch_size of prefill workers")
    p.add_argument(
        "--prefill-max-num-batched-tokens",
        type=int,
        help="chunked-prefill token budget of prefill workers",
    )
    p.add_argument(
        "--kv-transfer-ms-per-token",
        type=float,
        help="sim engine: KV hand-over cost to a decode worker (default 0.0052)",
    )


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--cost-model", help="sim engine: cost-model preset or profile file")
    p.add_argument("--kv-tokens", type=int, help="KV capacity per worker, tokens")
    p.add_argument("--max-model-len", type=int, help="prompt + output limit (default 8192)")
    p.add_argument("--max-batch-size", type=int, help="running requests per worker (default 256)")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="chunked prefill: tokens per iteration, prompt chunks included (default: off)",
    )
    p.add_argument(
        "--preemption",
        choices=("resume", "restart"),
        help="an evicted request keeps its output and resumes from prompt + output (default,"
        " vLLM's recompute preemption), or restarts from scratch",
    )
    p.add_argument(
        "--max-resubmits",
        type=int,
        help="failover: times a request resumes on another worker after its worker died"
        " (default 3; then it fails)",
    )
    p.add_argument("--speedup", type=float, help="sim engine: run this many times faster")
    p.add_argument("--sim-output-lengths", type=Path, help="sim engine: trace to draw lengths from")
    p.add_argument("--predictor", help="length predictor: default, a .kvp file, or none")
    p.add_argument(
        "--online-calibration",
        action=argparse.BooleanOptionalAction,
        help="recalibrate the predictor's intervals from each finished request's length "
        "(default on; --no-online-calibration keeps the model's offline calibration)",
    )
    p.add_argument(
        "--online-calibration-step",
        type=float,
        help="online recalibration step size, log space (default 0.2)",
    )
    p.add_argument(
        "--online-calibration-state",
        type=Path,
        help="JSON file the online recalibration is loaded from and saved to (default: none)",
    )
    p.add_argument("--max-queue", type=int, help="accepted but unfinished requests, max")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (413 beyond)")
    p.add_argument(
        "--api-key", dest="api_keys", action="append", help="accepted bearer key (repeatable)"
    )
    p.add_argument("--api-keys-file", type=Path, help="file of accepted keys, one per line")
    p.add_argument(
        "--open-path", dest="open_paths", action="append", help="path needing no key (repeatable)"
    )
    p.add_argument("--shutdown-grace-s", type=float, help="drain time on SIGTERM (default 30)")
    p.add_argument(
        "--worker-stall-timeout-s",
        type=float,
        help="restart a worker that reports nothing this long while it has work (default 120)",
    )
    p.add_argument("--seed", type=int, help="sim engine: output-length seed")
    p.add_argument(
        "--completion-log", type=Path, help="append one JSON line per finished request (retrain)"
    )
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="info")


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given; ValueError if invalid."""
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    if "policy_params" in overrides:
        overrides["policy_params"] = dict(_param(item) for item in overrides["policy_params"])
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where.replace('_', '-')}: {message}" if where else message)
        raise ValueError("invalid settings: " + "; ".join(problems)) from None


def _param(item: str) -> tuple[str, str | int | float | bool]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--policy-param expects KEY=VALUE, got {item!r}")
    value: str | int | float | bool = text
    if text.lower() in ("true", "false"):
        value = text.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
    return key, value


def run_serve(args: argparse.Namespace) -> int:
    settings = build_settings(args)
    import uvicorn  # the web stack loads only for this command

    from service.http.app import create_app

    app = create_app(settings)
    # uvicorn re-raises SIGTERM after its graceful shutdown; end with exit status 0 instead
    previous = signal.signal(signal.SIGTERM, _exit_zero)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_zero(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise SystemExit(0)
