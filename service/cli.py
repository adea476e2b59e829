"""The `kvsched` console command: one entry point, one subcommand per job.

`kvsched simulate` replays a trace through batch formers (issue #2); `kvsched policies` lists
them. Bad input (a malformed trace, an unknown policy, a bad option) ends with one line
`kvsched: error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.commands import bench as bench_cmd
from service.commands import plan as plan_cmd
from service.commands import predictor as predictor_cmd
from service.commands import profile as profile_cmd
from service.commands import replan as replan_cmd
from service.commands import serve as serve_cmd
from service.commands import simulate as simulate_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvsched", description="KV-cache-aware scheduling for LLM inference."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate_cmd.add_parser(commands)
    predictor_cmd.add_parser(commands)
    serve_cmd.add_parser(commands)
    bench_cmd.add_parser(commands)
    plan_cmd.add_parser(commands)
    replan_cmd.add_parser(commands)
    profile_cmd.add_parser(commands)
    listing = commands.add_parser("policies", help="list the batch formers and their parameters")
    listing.set_defaults(handler=simulate_cmd.list_policies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"kvsched: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
