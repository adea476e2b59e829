"""`kvsched profile`: XProfiler (docs/planner.md, "Profiling"; issue 6) over a serving engine.

Times the engine's real iterations over a grid of batch size x sequence length (a prefill
iteration, then decode iterations, per cell; TP degree 1: our engines have no TP), fits
`simulator.profiler.fit_cost_model` and writes a profile that `load_cost_model` loads.
An iteration's time is its wall time, or the duration the engine reports if that is longer (the
sim engine paces against a deadline and hides up to one iteration of caller overhead); times
are multiplied by the engine's `speedup` (sim), so a sim profile is in the emulated model's time.

`--engine vllm` steps vLLM's own engine in this process (`service.backends.vllm.VllmStepEngine`:
one iteration = one `LLMEngine.step()`, our scheduler class inside with policy `vllm`, prefix
caching off, KV blocks and token budget sized so each cell is one prefill step then decodes).
The profile is written as .toml (cost model + the samples as comments) or .json (the cost-model
fields only, the fit quality in `description`); `kvsched simulate --cost-model` reads both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
from tqdm import tqdm

from algorithms.batch import BatchView
from algorithms.state import RunningSet
from algorithms.types import LengthInterval, WaitingRequest
from service.engines.base import Engine
from service.protocol import GenerationRequest
from service.settings import Settings
from simulator.cost_model import PRESETS
from simulator.profiler import (
    ProfileFit,
    ProfileGrid,
    ProfileSample,
    fit_cost_model,
    render_profile,
)

DEFAULT_GRIDS: Final = {
    "sim": "1,4,16,64x128,512,2048",
    "hf": "1,2,4,8x16,32,64",
    "vllm": "1,4,16,32x32,128,256",
}
VLLM_PROFILE_POLICY: Final = "vllm"  # the batch former inside vLLM while profiling
FILLER_IDS: Final = 50  # prompts cycle through token ids 3..52 (valid in any real vocabulary)
Clock = Callable[[], float]


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "profile",
        help="time an engine's iterations and fit a cost model (XProfiler)",
        description="Time prefill and decode iterations over batch size x sequence length, "
        "fit the linear cost model and write it as a .toml profile for --cost-model.",
    )
    p.add_argument("--engine", choices=("sim", "hf", "vllm"), required=True)
    p.add_argument("--model", help="local Hugging Face model directory (hf, vllm engines)")
    p.add_argument("--out", type=Path, required=True, help="profile to write (.toml or .json)")
    p.add_argument(
        "--grid",
        help="BATCH_SIZES x SEQ_LENGTHS, e.g. 1,2,4x64,256 (default: "
        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_GRIDS.items())
        + ")",
    )
    p.add_argument("--decode-steps", type=int, default=4, help="decode iterations per cell")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is kept")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of the first cell")
    p.add_argument(
        "--cost-model",
        default="llama3-8b-h100",
        help=f"sim engine: the model it emulates ({', '.join(PRESETS)} or a profile)",
    )
    p.add_argument("--speedup", type=float, default=1.0, help="sim engine: run X times faster")
    p.add_argument("--kv-tokens", type=int, help="KV capacity to record (default: the engine's)")
    p.add_argument("--name", help="profile name (default: the --out file stem)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def build_engine(args: argparse.Namespace, grid: ProfileGrid | None = None) -> Engine:
    """The engine the serving path would run, from the same `Settings`."""
    fields: dict[str, Any] = {"engine": args.engine, "predictor": "none", "seed": 0}
    fields["kv_tokens"] = args.kv_tokens
    if args.engine == "vllm":
        assert grid is not None
        return build_vllm_engine(args.model, grid, fields)
    if args.engine == "hf":
        from service.engines.hf import HFEngine

        return HFEngine(Settings(model=args.model, **fields), 0)
    from service.engines.sim import SimEngine

    settings = Settings(cost_model=args.cost_model, speedup=args.speedup, **fields)
    return SimEngine(settings, 0)


def build_vllm_engine(model: str, grid: ProfileGrid, fields: dict[str, Any]) -> Engine:
    """`VllmStepEngine` sized for `grid`: each cell's prompts in one step, its KV in blocks."""
    from service.backends.vllm import VllmStepEngine, kv_block_size

    block = kv_block_size()
    longest = max(grid.seq_tokens) + grid.decode_steps + 2
    max_model_len = max(longest, 2 * block)
    # our scheduler charges each request up to one block more than vLLM holds (whole-block
    # rounding of its view, docs/vllm.md): room for that, or it would preempt mid-cell
    need = grid.decode_steps + 2 + block
    blocks = max(b * math.ceil((s + need) / block) for b, s in grid.cells())
    settings = Settings(
        model=model, policy=VLLM_PROFILE_POLICY, max_model_len=max_model_len, **fields
    )
    engine: Engine = VllmStepEngine(
        settings,
        max_num_seqs=max(grid.batch_sizes),
        max_num_batched_tokens=max(max(b * s for b, s in grid.cells()), max_model_len),
        num_blocks=max(blocks, math.ceil(max_model_len / block)) + 2,  # + null block, slack
    )
    return engine


def check_grid(grid: ProfileGrid, engine: Engine) -> None:
    """Every cell must fit the engine's context length and KV capacity."""
    for batch_size, seq_tokens in grid.cells():
        total = seq_tokens + grid.decode_steps + 1
        if total > engine.max_model_len:
            raise ValueError(
                f"grid cell {batch_size}x{seq_tokens}: {total} tokens per request exceed the "
                f"engine's max_model_len {engine.max_model_len}; use shorter --grid lengths"
            )
        if batch_size * total > engine.kv_capacity_tokens:
            raise ValueError(
                f"grid cell {batch_size}x{seq_tokens}: {batch_size * total} KV tokens exceed "
                f"the engine's capacity {engine.kv_capacity_tokens}; use a smaller --grid"
            )


def _requests(
    batch_size: int, seq_tokens: int, max_tokens: int
) -> tuple[list[GenerationRequest], list[WaitingRequest]]:
    generation = []
    waiting = []
    for j in range(batch_size):
        prompt = tuple(3 + (j * 7 + k) % FILLER_IDS for k in range(seq_tokens))
        generation.append(
            GenerationRequest(f"profile-{j}", prompt, max_tokens, 1, max_tokens, ignore_eos=True)
        )
        waiting.append(WaitingRequest(j, 0.0, seq_tokens, LengthInterval(1, max_tokens)))
    return generation, waiting


def time_cell(
    engine: Engine, batch_size: int, seq_tokens: int, decode_steps: int, clock: Clock
) -> list[tuple[ProfileSample, float]]:
    """One prefill and `decode_steps` decodes of a fresh batch: (sample, wall seconds) each."""
    generation, waiting = _requests(batch_size, seq_tokens, decode_steps + 2)
    for j, request in enumerate(generation):
        engine.add(j, request)
    running = RunningSet()
    running.admit(waiting, 0, engine.kv_capacity_tokens)
    produces = np.ones(batch_size, dtype=np.bool_)
    prefill = running.prompt_tokens.copy()
    out: list[tuple[ProfileSample, float]] = []
    for step in range(decode_steps + 1):
        phase = "prefill" if step == 0 else "decode"
        num_decode = int((produces & (running.prefill_left == 0)).sum())
        kv_tokens = running.next_step_tokens()
        started = clock()
        result = engine.execute(BatchView.of(running), prefill, produces)
        wall_s = max(clock() - started, result.elapsed_s)  # see the module docstring
        context = seq_tokens + step
        sample = ProfileSample(
            phase, 1, batch_size, context, int(prefill.sum()), num_decode, kv_tokens, 1.0
        )
        out.append((sample, wall_s))
        running.advance(prefill, produces)
        prefill = np.zeros(batch_size, dtype=np.int64)
    for j in range(batch_size):
        engine.release(j, forget=True)
    return out


def profile_engine(
    engine: Engine, grid: ProfileGrid, *, show_progress: bool = False, clock: Clock | None = None
) -> list[ProfileSample]:
    """Median-of-`repeats` samples over the grid, in the engine's time (ms)."""
    clock = clock or time.perf_counter
    scale_ms = 1000.0 * float(getattr(engine, "speedup", 1.0))
    first_b, first_s = grid.cells()[0]
    for _ in range(grid.warmup):
        time_cell(engine, first_b, first_s, grid.decode_steps, clock)
    samples: list[ProfileSample] = []
    cells = grid.cells()
    with tqdm(total=len(cells), desc="profile", unit="cell", disable=not show_progress) as bar:
        for batch_size, seq_tokens in cells:
            runs = [
                time_cell(engine, batch_size, seq_tokens, grid.decode_steps, clock)
                for _ in range(grid.repeats)
            ]
            walls = np.median([[wall for _, wall in run] for run in runs], axis=0)
            for (sample, _), wall_s in zip(runs[0], walls, strict=True):
                measured = max(float(wall_s) * scale_ms, 1e-6)
                samples.append(dataclasses.replace(sample, measured_ms=measured))
            bar.update(1)
    return samples


def check_args(args: argparse.Namespace) -> None:
    """Refuse option combinations before loading anything (one-line errors)."""
    if args.out.suffix.lower() not in (".toml", ".json"):
        raise ValueError(f"--out {args.out}: the profile is written as .toml or .json")
    if args.engine == "sim" and args.model:
        raise ValueError("--model is for --engine hf or vllm; the sim engine emulates --cost-model")
    if args.engine in ("hf", "vllm") and not args.model:
        raise ValueError(
            f"--engine {args.engine} needs --model, a local Hugging Face model directory"
        )
    if not args.speedup > 0:
        raise ValueError(f"--speedup must be > 0, got {args.speedup}")
    if args.kv_tokens is not None and args.kv_tokens < 1:
        raise ValueError(f"--kv-tokens must be >= 1, got {args.kv_tokens}")


def json_profile(fit: ProfileFit) -> dict[str, Any]:
    """The .json profile: `load_cost_model`'s fields only, the fit quality in the description."""
    data = fit.cost_model.to_dict()
    data["description"] = (
        f"{data['description']}; fit: nnls on relative error, R^2 (of ms) {fit.r_squared:.4f}, "
        f"relative error max {fit.max_relative_error:.3f} median "
        f"{fit.median_relative_error:.3f}, {fit.num_samples} samples"
    )
    return data


def run(args: argparse.Namespace) -> int:
    check_args(args)
    options = {"decode_steps": args.decode_steps, "repeats": args.repeats, "warmup": args.warmup}
    grid_text = args.grid or DEFAULT_GRIDS[args.engine]
    grid = ProfileGrid.parse(grid_text, **options)
    engine = build_engine(args, grid)
    try:
        check_grid(grid, engine)
        show = not args.no_progress and sys.stderr.isatty()
        samples = profile_engine(engine, grid, show_progress=show)
    finally:
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
    source = (
        args.model
        if args.engine in ("hf", "vllm")
        else f"{args.cost_model}, speedup {args.speedup}"
    )
    fit = fit_cost_model(
        samples,
        name=args.name or args.out.stem,
        kv_capacity_tokens=engine.kv_capacity_tokens,
        description=f"kvsched profile --engine {args.engine} ({source}), tp=1, grid {grid_text}",
    )
    header = f"kvsched profile: engine {args.engine} ({source}); times in ms; tp = 1"
    if args.out.suffix.lower() == ".json":
        args.out.write_text(json.dumps(json_profile(fit), indent=2) + "\n", encoding="utf-8")
    else:
        args.out.write_text(render_profile(fit, samples, header=header), encoding="utf-8")
    model = fit.cost_model
    print(
        f"{args.out}: {len(samples)} iterations; base_ms={model.base_ms:.4g} "
        f"prefill_ms_per_token={model.prefill_ms_per_token:.4g} "
        f"decode_ms_per_request={model.decode_ms_per_request:.4g} "
        f"kv_ms_per_token={model.kv_ms_per_token:.4g}; M={model.kv_capacity_tokens} tokens; "
        f"R^2={fit.r_squared:.4f}, relative error max={fit.max_relative_error:.3f} "
        f"median={fit.median_relative_error:.3f}"
    )
    return 0
