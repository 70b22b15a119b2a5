"""Names near NAME_MAX (255 bytes): every name vocwatch derives fits; one that cannot is a failure, not a loop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Spool, running, wait_for
from ingest_support import put_atomic, sidecar, wav_bytes

from vocwatch.testing.simulator import Simulator

NAME_MAX = 255


def _stem(nbytes: int) -> str:
    """A stem of exactly ``nbytes`` UTF-8 bytes, mostly 3-byte characters: bytes, not characters, count."""
    body = "通" * ((nbytes - 2) // 3)
    stem = "x" + body + "y" * (nbytes - 1 - len(body.encode()))
    assert len(stem.encode()) == nbytes
    return stem


def _drop(inbox: Path, audio: str, side: str, rid: str) -> tuple[bytes, bytes]:
    """A pair dropped atomically under short temp names: ``.NAME.tmp`` itself would not fit."""
    recording, metadata = wav_bytes(440), sidecar(rid)
    put_atomic(inbox / audio, recording, temp_name=".audio.tmp")
    put_atomic(inbox / side, metadata, temp_name=".sidecar.tmp")
    return recording, metadata


def _nbytes(path: Path | str) -> int:
    return len(os.fsencode(Path(path).name))


def _everything_fits(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            assert _nbytes(path) <= NAME_MAX, path


def test_a_pair_with_a_240_byte_stem_that_fails_validation_lands_in_failed_with_its_error_file(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    stem = _stem(240)  # its error file's temp name, .STEM.error.json.tmp, would be 256 bytes
    with running(make_settings()):
        _drop(spool.inbox, f"{stem}.wav", f"{stem}.json", "not a valid id!")
        wait_for(lambda: (spool.failed / f"{stem}.error.json").exists(), what="the error file in failed/")
    assert spool.files(spool.failed) == sorted([f"{stem}.error.json", f"{stem}.json", f"{stem}.wav"])
    error = json.loads((spool.failed / f"{stem}.error.json").read_text())
    assert error["reason"] == "invalid_id" and error["recording"] == f"{stem}.wav"
    assert spool.files(spool.work) == [] and spool.files(spool.inbox) == []
    assert sim.state.received == []


def test_a_lone_sidecar_with_a_246_byte_stem_lands_in_failed_as_missing_recording_with_its_error(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    stem = _stem(246)  # STEM.error.json would be 257 bytes
    content = sidecar("lonely")
    put_atomic(spool.inbox / f"{stem}.json", content, temp_name=".sidecar.tmp")
    with running(make_settings(watch__pair_timeout_seconds=0.5)):
        wait_for(lambda: len(spool.files(spool.failed)) == 2, what="the sidecar and its error in failed/")
    _everything_fits(spool.failed)
    errors = [p for p in spool.failed.iterdir() if p.name.endswith(".error.json")]
    assert len(errors) == 1
    side = next(p for p in spool.failed.iterdir() if p not in errors)
    assert side.read_bytes() == content and side.suffix == ".json"
    short = side.name[: -len(".json")]
    assert errors[0].name == f"{short}.error.json"  # the pair's own stem, shortened once for both
    assert stem.startswith(short.rsplit("-", 1)[0]) and len(short) < len(stem)
    error = json.loads(errors[0].read_text())
    assert error["reason"] == "missing_recording" and error["recording"] == f"{stem}.json"
    assert spool.files(spool.inbox) == []


@pytest.mark.parametrize(
    ("stem_bytes", "sidecar_form"),
    [(246, "{name}.json"), (250, "{stem}.json")],
    ids=["250_byte_name_with_NAME.wav.json", "254_byte_name_with_STEM.json"],
)
def test_a_name_collision_on_a_long_name_lands_in_done_under_a_shortened_suffixed_name(
    spool: Spool, sim: Simulator, make_settings, stem_bytes: int, sidecar_form: str
) -> None:
    stem = _stem(stem_bytes)
    name = f"{stem}.wav"
    earlier = spool.done / name
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier recording of the same name")
    _, sidecar_bytes = _drop(spool.inbox, name, sidecar_form.format(name=name, stem=stem), "long-collision")
    with running(make_settings()):
        row = wait_for(lambda: next((r for r in spool.rows() if r.state == "done"), None), what="delivered")
    destination = Path(row.destination or "")
    assert destination.parent == spool.done and destination.exists() and destination.suffix == ".wav"
    assert "~1" in destination.name and _nbytes(destination) <= NAME_MAX
    assert earlier.read_bytes() == b"an earlier recording of the same name"
    _everything_fits(spool.done)
    sidecars = [p for p in spool.done.iterdir() if p.suffix == ".json"]
    assert len(sidecars) == 1 and sidecars[0].read_bytes() == sidecar_bytes
    assert sidecars[0].name.startswith(destination.stem)  # it still pairs with its recording
    assert spool.files(spool.work) == [] and spool.files(spool.inbox) == []
    assert [r.metadata["id"] for r in sim.state.received] == ["long-collision"]


def _deep_rel(budget: int) -> str:
    """Nested folders of 200-byte names, as deep as fits in ``budget`` bytes."""
    parts = [f"{i:02d}" + "f" * 198 for i in range(budget // 201)]
    return "/".join(parts)


@pytest.mark.parametrize("alone", [False, True], ids=["pair_failing_validation", "lone_sidecar"])
def test_a_path_too_long_for_failed_lands_at_the_top_of_failed_as_name_too_long(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path, alone: bool
) -> None:
    # failed/ lies 600 bytes deeper than the inbox: the inbox's relative path fits under work/ but not
    # under failed/ (PATH_MAX, 4096), so the move itself fails with ENAMETOOLONG, whatever the names are.
    failed = tmp_path / ("g" * 200) / ("g" * 200) / ("g" * 200) / "failed"
    settings = make_settings(folders__failed=failed, watch__pair_timeout_seconds=0.5)
    work = settings.folders.work_root / settings.instance
    rel = _deep_rel(4000 - len(os.fsencode(str(work))) - 40)
    assert len(os.fsencode(f"{failed}/{rel}/call.error.json")) > 4096
    folder = spool.inbox / rel
    os.makedirs(folder)
    if alone:
        put_atomic(folder / "call.json", sidecar("lonely"), temp_name=".s.tmp")
    else:
        _drop(folder, "call.wav", "call.json", "not a valid id!")
    with running(settings):
        wait_for(lambda: (failed / "call.error.json").exists(), what="the error file at the top of failed/")
    error = json.loads((failed / "call.error.json").read_text())
    assert error["reason"] == "name_too_long" and error["path"] == f"{rel}/call.{'json' if alone else 'wav'}"
    assert sorted(p.name for p in failed.iterdir()) == ["call.error.json", "call.json"] + (
        [] if alone else ["call.wav"]
    )
    assert [p for p in spool.work.rglob("*") if p.is_file()] == []
    assert [p for p in spool.inbox.rglob("*") if p.is_file()] == []
    assert sim.state.received == []
