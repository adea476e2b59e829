"""The length-model file: one zip holding `header.json` plus text members, no pickle (issue 3).

The header names the format ("kvsched-length-model") and its version, and lists every other
member with its sha256, so a truncated, foreign, edited or future-version file fails on load
with a `ModelFileError` whose one-line message names the file and the problem. Writing is
deterministic (fixed member order and timestamps): the same model gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Final

FORMAT_NAME: Final = "kvsched-length-model"
FORMAT_VERSION: Final = 1
HEADER_MEMBER: Final = "header.json"
_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


class ModelFileError(ValueError):
    """A length-model file that cannot be used; the message names the file and the cause."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_model_file(path: str | Path, header: dict[str, Any], members: dict[str, str]) -> None:
    """Write `header` (format fields and member checksums added) and `members` to `path`."""
    full = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **header,
        "members": {name: _sha256(text) for name, text in sorted(members.items())},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entries = [(HEADER_MEMBER, json.dumps(full, indent=1, sort_keys=True))]
        for name, text in [*entries, *sorted(members.items())]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text.encode("utf-8"))


def _read_members(path: Path) -> dict[str, str]:
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name).decode("utf-8") for name in archive.namelist()}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(
            f"{path}: not a {FORMAT_NAME} file (unreadable zip, truncated or foreign): {exc}"
        ) from exc
    except (OSError, UnicodeDecodeError, zipfile.LargeZipFile) as exc:
        raise ModelFileError(f"{path}: cannot read model file: {exc}") from exc


def _check_header(path: Path, raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise ModelFileError(f"{path}: not a {FORMAT_NAME} file (no {HEADER_MEMBER})")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: {HEADER_MEMBER} is not valid JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else None
        raise ModelFileError(f"{path}: format is {found!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version!r} is not supported (this kvsched reads version "
            f"{FORMAT_VERSION}); retrain the model or use a matching kvsched"
        )
    return header


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The verified header and the other members of the model file at `path`."""
    source = Path(path)
    members = _read_members(source)
    header = _check_header(source, members.pop(HEADER_MEMBER, None))
    listed = header.get("members")
    if not isinstance(listed, dict) or set(listed) != set(members):
        raise ModelFileError(f"{source}: members {sorted(members)} do not match the header's list")
    for name, text in members.items():
        if _sha256(text) != listed[name]:
            raise ModelFileError(f"{source}: member {name} fails its sha256 check (corrupt file)")
    return header, members
