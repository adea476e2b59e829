"""A small Dockerfile reader for the image tests (issue 5): stages, their chains, invariants.

Reads what our Dockerfile uses: parser-directive and comment lines, `\\` continuations, global
ARGs with defaults, `FROM image AS name`, and instructions as (keyword, arguments). The image
invariants (pinned bases, non-root user, healthcheck, dependencies before source, no build tools
in the final stages) are returned as a list of problems, so a test can also show that each check
fires on a broken Dockerfile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXACT_TAG = re.compile(r"[\w./-]+:[\w.-]*\d+\.\d+\.\d+[\w.-]*")
DIGEST = re.compile(r"[\w./:-]+@sha256:[0-9a-f]{64}")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|cmake|build-essential|git|\w+-dev)\b")
PACKAGES = ("algorithms", "predictors", "simulator", "service")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    base: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True, slots=True)
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        (stage,) = [s for s in self.stages if s.name == name]
        return stage

    def chain(self, name: str) -> list[Stage]:
        """The stages `name` builds on, root first, ending with `name`."""
        stage = self.stage(name)
        names = {s.name for s in self.stages}
        return [*self.chain(stage.base), stage] if stage.base in names else [stage]

    def base_image(self, stage: Stage) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)), stage.base)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
        else:
            lines.append(pending)
            pending = ""
    return lines + ([pending] if pending else [])


def parse(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, re.IGNORECASE)
            assert match, f"FROM without a stage name: {line}"
            current = []
            stages.append(Stage(match.group(2), match.group(1), ()))
        elif current is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.append(Instruction(keyword, rest))
            stages[-1] = Stage(stages[-1].name, stages[-1].base, tuple(current))
    return Dockerfile(args, tuple(stages))


def _chain_all(chain: list[Stage], keyword: str) -> list[str]:
    return [args for stage in chain for args in stage.all(keyword)]


def final_problems(dockerfile: Dockerfile, target: str) -> list[str]:
    """Non-root user, healthcheck, and nothing but the built venv from build stages."""
    chain = dockerfile.chain(target)
    problems = []
    users = _chain_all(chain, "USER")
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        problems.append(f"{target}: no numeric non-root USER")
    if not any("/health" in check for check in _chain_all(chain, "HEALTHCHECK")):
        problems.append(f"{target}: no HEALTHCHECK of /health")
    for run in _chain_all(chain, "RUN"):
        if "pip install" in run or BUILD_TOOLS.search(run):
            problems.append(f"{target}: builds in the final image: {run[:60]}")
    for copy in _chain_all(chain, "COPY"):
        if copy.startswith("--from=") and not copy.endswith("/opt/venv /opt/venv"):
            problems.append(f"{target}: copies more than the venv from a build stage: {copy}")
    return problems


def deps_before_source_problems(dockerfile: Dockerfile, build: str) -> list[str]:
    """In the build chain, requirements are installed before any package source is copied."""
    steps = [(i.keyword, i.args) for stage in dockerfile.chain(build) for i in stage.instructions]
    installs = [
        n for n, (kw, args) in enumerate(steps) if kw == "RUN" and "-r requirements" in args
    ]
    sources = [
        n
        for n, (kw, args) in enumerate(steps)
        if kw == "COPY" and any(re.search(rf"(^|\s){p}(\s|/|$)", args) for p in PACKAGES)
    ]
    if not installs or not sources or installs[0] > sources[0]:
        return [f"{build}: the source is copied before the dependencies are installed"]
    return []


def problems(dockerfile: Dockerfile) -> list[str]:
    """Every broken invariant of the issue's image (an empty list when all hold)."""
    found = []
    if len(dockerfile.stages) < 3 or dockerfile.stages[-1].name != "cpu":
        found.append("not multi-stage with `cpu` (the default target) last")
    stage_names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        base = dockerfile.base_image(stage)
        pinned = EXACT_TAG.fullmatch(base) or DIGEST.fullmatch(base)
        if base not in stage_names and not pinned:
            found.append(f"{stage.name}: base image {base!r} is not an exact tag or digest")
    for target, build in (("cpu", "build"), ("gpu", "build-gpu")):
        found += final_problems(dockerfile, target)
        found += deps_before_source_problems(dockerfile, build)
    return found
