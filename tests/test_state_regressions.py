"""Regressions of the review's defects 3 and 4, each through the real pipeline, folders and ledger."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest
from support.fakes import EventLog, FailAt, MemoryUploader
from support.world import World

from vocwatch.core.states import State
from vocwatch.edges.effects import Effect, listening

WAV = b"RIFF" + (400).to_bytes(4, "little") + b"WAVEfmt " + b"x" * 400


@pytest.mark.parametrize("require_sidecar", [True, False], ids=["sidecar-required", "lone-allowed"])
def test_a_move_that_fails_after_the_sidecar_went_is_finished_not_misfiled(
    tmp_path: Path, require_sidecar: bool
) -> None:
    """Defect 3: the sidecar reached done/, the audio's link hit a full disk. The next rescan must finish
    the move from the ledger's row: not fail it as missing_sidecar, not upload it again under its stem."""
    world = World(tmp_path, require_sidecar=require_sidecar)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    [pair] = world.ready()
    claimed = world.claim(pair)
    assert claimed is not None
    full = FailAt(Effect.LINK, "done/a.wav", OSError(errno.ENOSPC, "No space left on device"))
    with listening(full), pytest.raises(OSError):
        world.journey(claimed)
    assert full.fired and world.files("done") == ["a.json"] and world.files("work/host-1") == ["a.wav"]
    for leftover in world.leftovers():  # the next rescan
        world.journey(leftover)
    assert world.files("done") == ["a.json", "a.wav"]
    assert world.files("failed") == [] and world.files("inbox") == []
    [row] = world.process.ledger.find("rec-a") if world.process else []
    assert row.state == State.DONE and row.destination == str(tmp_path / "done" / "a.wav")
    assert len(world.uploader.received) == 1


def test_a_name_taken_in_done_meanwhile_moves_the_pair_together_under_the_next_suffix(tmp_path: Path) -> None:
    """Defect 3: a stranger's done/a.wav appears after the sidecar's move was planned; the pair must not be
    split into a.json + a~1.wav."""
    world = World(tmp_path)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    [pair] = world.ready()
    claimed = world.claim(pair)
    assert claimed is not None
    stranger = tmp_path / "done" / "a.wav"
    race = FailAt(Effect.LINK, "done/a.json", OSError(), then=lambda: stranger.write_bytes(b"someone else's"))
    with listening(race):
        assert world.journey(claimed) == "accepted"
    assert world.files("done") == ["a.wav", "a~1.json", "a~1.wav"]
    assert stranger.read_bytes() == b"someone else's"
    assert json.loads((tmp_path / "done" / "a~1.json").read_text())["id"] == "rec-a"


def test_a_backfill_and_the_daemon_upload_the_same_recording_once(tmp_path: Path) -> None:
    """Defect 4: the same pair claimed by two live processes on one ledger. The second waits while the
    first holds the row open, then records a duplicate of its job; it never takes the row over."""
    entered, release = threading.Event(), threading.Event()

    def slow_first(filename: str) -> None:
        if filename == "a.wav":
            entered.set()
            assert release.wait(10)

    server = MemoryUploader(slow_first)
    daemon = World(tmp_path, uploader=server, holder="host-1")
    backfill_log = EventLog()
    backfill = World(tmp_path, uploader=server, holder="host-1-upload", log=backfill_log)
    daemon.start()
    backfill.start()
    daemon.drop("a.wav", "rec-a", WAV)
    daemon.drop("copy.wav", "rec-a", WAV)  # the same recording, given to the backfill too
    first = daemon.claim(daemon.ready()[0])
    second = backfill.claim(backfill.ready()[0])
    assert first is not None and second is not None
    results: dict[str, str] = {}
    one = threading.Thread(target=lambda: results.update(daemon=daemon.journey(first)))
    two = threading.Thread(target=lambda: results.update(backfill=backfill.journey(second)))
    one.start()
    assert entered.wait(10)
    two.start()
    assert backfill_log.wait_for("claim.busy")  # it waits for the daemon's row, it does not take it
    release.set()
    one.join(10)
    two.join(10)
    assert results == {"daemon": "accepted", "backfill": "duplicate"}
    assert len(server.received) == 1
    assert daemon.process is not None
    rows = {r.file: r for r in daemon.process.ledger.find("rec-a")}
    assert rows["a.wav"].state == State.DONE and rows["a.wav"].job_id == "job-1"
    assert rows["copy.wav"].state == State.DUPLICATE and rows["copy.wav"].duplicate_of == "job-1"
    daemon.crash()
    backfill.crash()


def test_a_row_whose_holder_died_is_taken_over(tmp_path: Path) -> None:
    """The other half of defect 4: busy means alive. A holder that died leaves its row to be taken over."""
    server = MemoryUploader()
    gone = World(tmp_path, uploader=server, holder="host-1-upload")
    gone.start()
    gone.drop("a.wav", "rec-a", WAV)
    claimed = gone.claim(gone.ready()[0])
    assert claimed is not None and gone.process is not None
    row = gone.process.ledger.claim("rec-a", _sha(WAV), "a.wav", len(WAV))
    assert row is not None
    gone.crash()  # its lock goes with it
    daemon = World(tmp_path, uploader=server, holder="host-1")
    daemon.start()
    daemon.drop("b.wav", "rec-a", WAV)
    other = daemon.claim(daemon.ready()[0])
    assert other is not None
    assert daemon.journey(other) == "accepted"
    assert daemon.process is not None
    [taken] = daemon.process.ledger.find("rec-a")
    assert taken.id == row.id and taken.state == State.DONE and taken.holder is None


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
