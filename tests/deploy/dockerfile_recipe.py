"""Replays a Dockerfile build chain on this machine, under a scratch root (issue 5).

WORKDIR, COPY (from the build context), ENV and RUN of the chain's stages run in order, with
the container's absolute paths (WORKDIR, COPY destinations, `python -m venv` targets) moved
under `root`. RUN uses `/bin/sh -c` as Docker does, with this machine's Python first on PATH
(the same 3.11 as the base image) and pip's configured index, so the image recipe itself is what
the test proves works. Only what our build stages use is supported; anything else fails loudly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from tests.deploy.dockerfile import Dockerfile, Instruction, Stage


class Recipe:
    """The sandboxed state of one build: working directory, environment, path mapping."""

    def __init__(self, context: Path, root: Path, prefixes: list[str]) -> None:
        self.context, self.root = context, root
        self.prefixes = sorted(prefixes, key=len, reverse=True)  # longest first
        self.cwd = PurePosixPath("/")
        python_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{python_dir}:{os.environ.get('PATH', '')}"}
        self.env.pop("PYTHONPATH", None)
        self.env.pop("VIRTUAL_ENV", None)

    def host(self, container_path: str) -> str:
        """The scratch path for a container path (relative ones are under the WORKDIR)."""
        path = PurePosixPath(self.cwd, container_path)
        return str(self.root) + str(path)

    def rewrite(self, text: str) -> str:
        """Container absolute paths in a command or ENV value, moved under the scratch root."""
        for prefix in self.prefixes:
            text = re.sub(rf"(?<![\w/]){re.escape(prefix)}(?=[/\s:\"']|$)", self.host(prefix), text)
        return text

    def apply(self, instruction: Instruction, timeout_s: float) -> None:
        keyword, args = instruction.keyword, instruction.args
        if keyword == "WORKDIR":
            self.cwd = PurePosixPath(self.cwd, args)
            Path(self.host(str(self.cwd))).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            self._copy(shlex.split(args))
        elif keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                value = self.rewrite(value)  # before $VAR expansion: host paths stay as they are
                self.env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: self.env.get(m[1], ""), value)
        elif keyword == "RUN":
            self._run(args, timeout_s)
        else:
            raise AssertionError(f"the recipe runner does not know {keyword} {args}")

    def _copy(self, words: list[str]) -> None:
        assert not any(w.startswith("--") for w in words), f"COPY flags unsupported: {words}"
        *sources, dest = words
        target = Path(self.host(dest))
        for source in sources:
            path = self.context / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=_IGNORED)
            else:
                into = target / path.name if dest.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)

    def _run(self, command: str, timeout_s: float) -> None:
        cwd = self.host(str(self.cwd))
        result = subprocess.run(
            ["/bin/sh", "-c", self.rewrite(command)],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"RUN {command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def container_prefixes(stages: list[Stage]) -> list[str]:
    """Absolute container paths the chain creates: WORKDIRs, COPY targets, venvs."""
    prefixes = set()
    for stage in stages:
        for instruction in stage.instructions:
            words = instruction.args.split()
            if instruction.keyword == "WORKDIR" or (
                instruction.keyword == "COPY" and words[-1].startswith("/")
            ):
                prefixes.add(words[-1].rstrip("/") or "/")
            for match in re.finditer(r"-m venv (/\S+)", instruction.args):
                prefixes.add(match.group(1))
    return sorted(p for p in prefixes if p != "/")


def replay(dockerfile: Dockerfile, stage: str, context: Path, root: Path, timeout_s: float) -> None:
    """Run every instruction of `stage`'s chain; AssertionError naming the step that failed."""
    chain = dockerfile.chain(stage)
    recipe = Recipe(context, root, container_prefixes(chain))
    for current in chain:
        for instruction in current.instructions:
            recipe.apply(instruction, timeout_s)
