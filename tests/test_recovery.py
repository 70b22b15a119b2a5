"""Start-up recovery, one row of the design's table each: what a crash left, and what a restart does."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from conftest import Spool, drop, running, wait_for

from vocwatch.core.model import Pair
from vocwatch.core.states import State
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.folders import Claimed
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime.daemon import build
from vocwatch.testing.simulator import Simulator


def _claim(spool: Spool, settings: Settings, name: str, rid: str) -> tuple[Claimed, str]:
    """Drop a pair and claim it into work/ the way the planner does; return it and its sha256."""
    audio, _ = drop(spool.inbox, name, rid)
    sha = hashlib.sha256(audio.read_bytes()).hexdigest()
    parts = build(settings)
    parts.folders.ensure()
    claimed = parts.folders.claim(Pair(PurePosixPath(name), PurePosixPath(name).with_suffix(".json")))
    parts.close()
    assert claimed is not None
    return claimed, sha


def _ledger(spool: Spool) -> Ledger:
    return Ledger(spool.ledger_path, SystemClock())


def _accepted_row(spool: Spool, claimed: Claimed, rid: str, sha: str, destination: Path) -> None:
    book = _ledger(spool)
    row = book.claim(rid, sha, str(claimed.pair.audio), claimed.audio.stat().st_size)
    assert row is not None
    row = book.begin_attempt(row)
    book.transition(row, State.ACCEPTED, job_id="job-from-before-the-crash", destination=str(destination))
    book.close()


def _settle(spool: Spool, settings: Settings) -> None:
    with running(settings):
        wait_for(lambda: all(r.state in ("done", "failed") for r in spool.rows()) and spool.rows(), what="settled")
        wait_for(lambda: spool.files(spool.work) == [], what="work/ empty")


def test_accepted_row_with_files_in_work_is_moved_without_uploading(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    settings = make_settings()
    claimed, sha = _claim(spool, settings, "a.wav", "rec-a")
    _accepted_row(spool, claimed, "rec-a", sha, spool.done / "a.wav")
    _settle(spool, settings)
    [row] = spool.rows()
    assert (row.state, row.job_id) == ("done", "job-from-before-the-crash")
    assert spool.files(spool.done) == ["a.json", "a.wav"]
    assert sim.state.requests == 0


def test_accepted_row_whose_sidecar_already_moved_finishes_the_recording(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    settings = make_settings()
    claimed, sha = _claim(spool, settings, "b.wav", "rec-b")
    _accepted_row(spool, claimed, "rec-b", sha, spool.done / "b.wav")
    spool.done.mkdir(parents=True, exist_ok=True)
    assert claimed.sidecar is not None
    os.rename(claimed.sidecar, spool.done / "b.json")  # the crash fell between the two renames
    _settle(spool, settings)
    assert spool.files(spool.done) == ["b.json", "b.wav"]
    assert spool.rows()[0].state == "done" and sim.state.requests == 0


def test_accepted_row_whose_files_already_moved_is_marked_done(spool: Spool, sim: Simulator, make_settings) -> None:
    settings = make_settings()
    claimed, sha = _claim(spool, settings, "c.wav", "rec-c")
    _accepted_row(spool, claimed, "rec-c", sha, spool.done / "c.wav")
    spool.done.mkdir(parents=True, exist_ok=True)
    for path in claimed.paths():
        os.rename(path, spool.done / path.name)  # moved, but the crash came before the 'done' commit
    _settle(spool, settings)
    assert spool.rows()[0].state == "done" and sim.state.requests == 0


def test_uploading_row_is_sent_again_with_the_same_idempotency_key(spool: Spool, sim: Simulator, make_settings) -> None:
    settings = make_settings()
    claimed, sha = _claim(spool, settings, "d.wav", "rec-d")
    book = _ledger(spool)
    row = book.claim("rec-d", sha, "d.wav", claimed.audio.stat().st_size)
    assert row is not None
    book.begin_attempt(row)  # the request may have been on the wire when the crash came
    book.close()
    _settle(spool, settings)
    [row] = spool.rows()
    assert row.state == "done" and row.attempts == 2
    assert [r.idempotency_key for r in sim.state.received] == [f"rec-d-{sha}"]


def test_pair_in_work_without_a_row_is_validated_and_sent(spool: Spool, sim: Simulator, make_settings) -> None:
    settings = make_settings()
    _claim(spool, settings, "e.wav", "rec-e")
    _settle(spool, settings)
    assert spool.rows()[0].state == "done" and len(sim.state.received) == 1


def test_lone_half_in_work_goes_back_to_the_inbox(spool: Spool, sim: Simulator, make_settings) -> None:
    settings = make_settings()
    claimed, _ = _claim(spool, settings, "f.wav", "rec-f")
    os.rename(claimed.audio, spool.inbox / "f.wav")  # only the sidecar was claimed when the crash came
    with running(settings):
        wait_for(lambda: any(r.state == "done" for r in spool.rows()), what="pair re-formed and sent")
    assert spool.files(spool.done) == ["f.json", "f.wav"] and spool.files(spool.work) == []


def test_done_row_whose_work_copies_survived_a_power_cut_drops_them(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    settings = make_settings()
    claimed, sha = _claim(spool, settings, "g.wav", "rec-g")
    _accepted_row(spool, claimed, "rec-g", sha, spool.done / "g.wav")
    spool.done.mkdir(parents=True, exist_ok=True)
    for path in claimed.paths():
        os.link(path, spool.done / path.name)  # the links reached the disk, the unlinks from work/ did not
    book = _ledger(spool)
    book.transition(book.find("rec-g")[0], State.DONE, destination=str(spool.done / "g.wav"))
    book.close()
    with running(settings):
        wait_for(lambda: spool.files(spool.work) == [], what="work/ copies dropped")
    assert spool.files(spool.done) == ["g.json", "g.wav"]
    assert [r.state for r in spool.rows()] == ["done"] and sim.state.requests == 0
