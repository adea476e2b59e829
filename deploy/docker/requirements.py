"""Requirement lines of pyproject.toml, for the Dockerfile's dependency layer (docs/deploy.md).

`python requirements.py pyproject.toml [--extra NAME ...]` writes `project.dependencies` plus the
named optional extras, one per line, so the image installs its dependencies before the source is
copied (a source change does not rebuild them). Invariant: pyproject.toml stays the only list.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """`project.dependencies` then each extra's list; ValueError naming an unknown extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{pyproject}: no optional dependency group {extra!r}")
        lines += optional[extra]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional group to add")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra)
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        sys.stderr.write(f"requirements: error: {exc}\n")
        return 2
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
