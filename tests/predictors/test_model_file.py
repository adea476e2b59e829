"""Tests for the length-model file (predictors/model_file.py, LengthModel.save / load)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from predictors.model import Kind, LengthModel, ModelFileError
from predictors.model_file import FORMAT_NAME, FORMAT_VERSION
from tests.predictors.synthetic_lengths import HELD_OUT_CAP, fitted_model, held_out_samples


def _members(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


def _write_members(path: Path, members: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "lengths.kvp"
    fitted_model("quantile").save(path)
    return path


@pytest.mark.parametrize("kind", ["quantile", "histogram"])
def test_round_trip_gives_identical_predictions(kind: Kind, tmp_path: Path) -> None:
    model = fitted_model(kind)
    model.save(tmp_path / "m.kvp")
    again = LengthModel.load(tmp_path / "m.kvp")
    batch = held_out_samples().take(np.arange(2000)).batch(HELD_OUT_CAP)
    assert np.array_equal(again.predict_log(batch), model.predict_log(batch))
    lo, hi = model.predict(batch)
    assert all(np.array_equal(a, b) for a, b in zip(again.predict(batch), (lo, hi), strict=True))
    gen = np.random.default_rng(0).integers(1, 5000, size=len(lo))
    caps = np.full(len(lo), HELD_OUT_CAP)
    refined = zip(again.refine(lo, hi, gen, caps), model.refine(lo, hi, gen, caps), strict=True)
    assert all(np.array_equal(a, b) for a, b in refined)
    assert (again.kind, again.d_lo, again.d_hi, again.info) == (kind, 0.05, 0.05, model.info)
    assert (again.offsets, again.ladder, again.spec) == (model.offsets, model.ladder, model.spec)


def test_file_is_self_describing_and_deterministic(saved: Path, tmp_path: Path) -> None:
    header = json.loads(_members(saved)["header.json"])
    assert (header["format"], header["format_version"]) == (FORMAT_NAME, FORMAT_VERSION)
    assert header["kind"] == "quantile" and header["created_by"].startswith("kvsched")
    assert header["features"]["names"][0] == "log_prompt_tokens"
    assert set(header["members"]) == {"q_lo.txt", "q_mid.txt", "q_hi.txt"}
    assert len(header["training"]["data_sha256"]) == 64
    fitted_model("quantile").save(tmp_path / "again.kvp")
    assert (tmp_path / "again.kvp").read_bytes() == saved.read_bytes()


def _edit_header(**changes: object) -> Callable[[Path, Path], None]:
    def edit(source: Path, target: Path) -> None:
        members = _members(source)
        header = json.loads(members["header.json"])
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                header[section][field] = value
            else:
                header[key] = value
        members["header.json"] = json.dumps(header)
        _write_members(target, members)

    return edit


def _edit_member(
    name: str, text: str | None, *, fix_checksum: bool = False
) -> Callable[[Path, Path], None]:
    def edit(source: Path, target: Path) -> None:
        members = _members(source)
        if text is None:
            del members[name]
        else:
            members[name] = text
        if fix_checksum and text is not None:
            header = json.loads(members["header.json"])
            header["members"][name] = hashlib.sha256(text.encode()).hexdigest()
            members["header.json"] = json.dumps(header)
        _write_members(target, members)

    return edit


CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "truncated": (lambda s, t: t.write_bytes(s.read_bytes()[: s.stat().st_size // 2]), "zip"),
    "empty": (lambda s, t: t.write_bytes(b""), "zip"),
    "text": (lambda s, t: t.write_text('{"format": "kvsched-length-model"}'), "zip"),
    "foreign zip": (lambda s, t: _write_members(t, {"notes.txt": "hi"}), "header.json"),
    "format name": (_edit_header(format="onnx-model"), "'onnx-model'"),
    "format version": (_edit_header(format_version=FORMAT_VERSION + 1), "version 2"),
    "header json": (_edit_member("header.json", "{not json"), "not valid JSON"),
    "edited booster": (_edit_member("q_hi.txt", "tree\n"), "sha256"),
    "unparsable booster": (
        _edit_member("q_lo.txt", "tree\n", fix_checksum=True),
        "invalid model content",
    ),
    "missing booster": (_edit_member("q_mid.txt", None), "members"),
    "kind": (_edit_header(kind="forest"), "forest"),
    "feature version": (_edit_header(features__version=99), "feature version 99"),
    "feature names": (_edit_header(features__names=["x"]), "feature names"),
    "ladder": (_edit_header(ladder__rhos=[-1.0]), "invalid model content"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_files_fail_with_one_clear_line(name: str, saved: Path, tmp_path: Path) -> None:
    corrupt, expected = CORRUPTIONS[name]
    target = tmp_path / "bad.kvp"
    corrupt(saved, target)
    with pytest.raises(ModelFileError) as caught:
        LengthModel.load(target)
    message = str(caught.value)
    assert message.startswith(str(target)) and "\n" not in message
    assert expected in message


def test_paths_that_are_not_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a file"):
        LengthModel.load(tmp_path)
    with pytest.raises(ModelFileError, match="no such model file"):
        LengthModel.load(tmp_path / "missing.kvp")
    assert issubclass(ModelFileError, ValueError)
