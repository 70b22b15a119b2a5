"""The status poller on its own: real ledger rows and folders, a scripted status endpoint, a fake clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakes import NOT_FOUND, FullDiskAt, ScriptedStatus, status
from support.world import QUIET, World

from vocwatch.core.states import Row, Stage, State
from vocwatch.edges.effects import Effect, listening
from vocwatch.runtime.poller import StatusPoller

UNKNOWN_AFTER_S = 60.0


def _wav(tag: str) -> bytes:
    body = f"recording {tag} ".encode() * 8
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path, done_stage=Stage.UPLOADED)  # done_after = "completed"
    world.start()
    yield world
    world.crash()


def _poller(world: World, source: ScriptedStatus) -> StatusPoller:
    assert world.process is not None
    return StatusPoller(
        ledger=world.process.ledger,
        client=source,
        clock=world.clock,
        folders=world.process.folders,
        initial_s=1.0,
        max_s=8.0,
        factor=2.0,
        unknown_after_s=UNKNOWN_AFTER_S,
        log=QUIET,
    )


def _accept(world: World, name: str = "a.wav", rid: str = "rec-a") -> Row:
    """Drop a pair and send it: accepted, its files in uploaded/ (or wherever a fault left them)."""
    world.drop(name, rid, _wav(rid))
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    world.journey(claimed)
    return _row(world, rid)


def _row(world: World, rid: str) -> Row:
    assert world.process is not None
    (row,) = world.process.ledger.find(rid)
    return row


def _when_due(world: World, poller: StatusPoller, rid: str) -> Row:
    """Let the clock run to the row's next poll, poll, and return the row as it then is."""
    due = _row(world, rid).next_poll_at
    assert due is not None, "the row is no longer polled"
    world.clock.now = due
    poller.poll_due()
    return _row(world, rid)


def test_the_poll_interval_grows_by_the_factor_up_to_the_maximum(world: World) -> None:
    row = _accept(world)
    assert row.state == State.UPLOADED and row.poll_interval == 1.0
    poller = _poller(world, ScriptedStatus())  # every job stays "started"
    intervals = []
    for _ in range(5):
        before = world.clock.now
        row = _when_due(world, poller, "rec-a")
        assert row.next_poll_at == world.clock.now + row.poll_interval
        assert world.clock.now > before
        intervals.append(row.poll_interval)
    assert intervals == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert row.state == State.UPLOADED and row.job_status == "started"


def test_a_completed_job_moves_its_pair_from_uploaded_to_done(world: World) -> None:
    row = _accept(world)
    source = ScriptedStatus()
    source.answer(str(row.job_id), status(str(row.job_id), "completed"))
    row = _when_due(world, _poller(world, source), "rec-a")
    assert row.state == State.DONE and row.job_status == "completed" and row.next_poll_at is None
    assert world.files("uploaded") == []
    assert world.files("done") == ["a.json", "a.wav"]
    assert row.destination == str(world.stage("done") / "a.wav")


def test_a_failed_job_moves_its_pair_to_failed_with_the_reason(world: World) -> None:
    row = _accept(world)
    source = ScriptedStatus()
    source.answer(str(row.job_id), status(str(row.job_id), "failed", error="could not transcribe"))
    row = _when_due(world, _poller(world, source), "rec-a")
    assert row.state == State.FAILED and row.job_status == "failed"
    assert world.files("failed") == ["a.error.json", "a.json", "a.wav"]
    error = json.loads((world.stage("failed") / "a.error.json").read_text())
    assert error["reason"] == "job_failed" and "could not transcribe" in error["message"]
    assert error["job_id"] == row.job_id


def test_a_job_unknown_for_less_than_unknown_job_seconds_is_asked_about_again(world: World) -> None:
    row = _accept(world)
    source = ScriptedStatus()
    source.answer(str(row.job_id), NOT_FOUND)
    poller = _poller(world, source)
    first = _when_due(world, poller, "rec-a")
    assert first.unknown_since == world.clock.now
    while True:
        due = _row(world, "rec-a").next_poll_at
        assert due is not None
        if due - first.unknown_since >= UNKNOWN_AFTER_S:
            break
        row = _when_due(world, poller, "rec-a")
        assert row.state == State.UPLOADED and row.job_status is None
        assert row.unknown_since == first.unknown_since  # the first 404 counts, not the latest
    assert len(source.asked) > 2
    assert world.files("uploaded") == ["a.json", "a.wav"]


def test_a_job_unknown_for_unknown_job_seconds_ends_failed_as_job_unknown(world: World) -> None:
    row = _accept(world)
    source = ScriptedStatus()
    source.answer(str(row.job_id), NOT_FOUND)
    poller = _poller(world, source)
    since = _when_due(world, poller, "rec-a").unknown_since
    assert since is not None
    world.clock.now = since + UNKNOWN_AFTER_S
    poller.poll_due()
    row = _row(world, "rec-a")
    assert row.state == State.FAILED and row.job_status == "unknown" and row.next_poll_at is None
    error = json.loads((world.stage("failed") / "a.error.json").read_text())
    assert error["reason"] == "job_unknown"
    assert world.files("failed") == ["a.error.json", "a.json", "a.wav"]


def test_a_final_status_before_the_files_arrive_still_moves_them(world: World) -> None:
    """Defect 6: the job completes while the pair is still in work/ (its move into uploaded/ failed on a
    full disk); once a retry gets it to uploaded/, the settle pass moves it on to done/."""
    full = FullDiskAt(effect=Effect.LINK, within=str(world.stage("uploaded")))
    with pytest.raises(OSError), listening(full):
        _accept(world)
    assert full.struck
    row = _row(world, "rec-a")
    assert row.state == State.ACCEPTED and world.files("work/host-1") == ["a.json", "a.wav"]
    source = ScriptedStatus()
    source.answer(str(row.job_id), status(str(row.job_id), "completed"))
    poller = _poller(world, source)
    row = _when_due(world, poller, "rec-a")
    assert row.state == State.ACCEPTED and row.job_status == "completed"  # final, and nothing left to poll
    assert row.next_poll_at is None

    for leftover in world.leftovers():  # the next rescan retries the move
        world.journey(leftover)
    assert _row(world, "rec-a").state == State.UPLOADED
    poller.poll_due()  # the settle pass, with no poll due

    row = _row(world, "rec-a")
    assert row.state == State.DONE
    assert world.files("done") == ["a.json", "a.wav"]
    assert world.files("uploaded") == [] and world.files("work") == []
