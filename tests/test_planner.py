"""The planner alone, on a fake clock: what it claims, when, and in which order (no threads, no watcher)."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import cast

import pytest
import structlog
from support.fakes import FakeClock, QueuePool

from vocwatch.core.model import Problem
from vocwatch.core.pairing import Expired, Rules
from vocwatch.core.reasons import Reason
from vocwatch.core.states import State
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime.planner import Planner, ScanOptions
from vocwatch.runtime.pool import Pool
from vocwatch.runtime.unpaired import fail_unpaired
from vocwatch.testing.samples import write_wav

SETTLE, TIMEOUT = 2.0, 30.0


class Rig:
    def __init__(self, root: Path, capacity: int = 100) -> None:
        self.clock = FakeClock()
        self.pool = QueuePool(capacity)
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.folders = Folders(
            inbox=self.inbox,
            work=root / "work" / "me",
            done=root / "done",
            failed=root / "failed",
            uploaded=root / "uploaded",
        )
        self.folders.ensure()
        options = ScanOptions(rules=Rules(SETTLE, TIMEOUT, True), ignore=(".*", "*.tmp"), recursive=True, rescan_s=60)
        self.ledger = Ledger(root / "ledger.sqlite3", self.clock, holder="me")
        self.planner = Planner(
            folders=self.folders,
            ledger=self.ledger,
            pool=cast(Pool, self.pool),
            clock=self.clock,
            options=options,
            log=structlog.get_logger("test.planner"),
        )
        self.root = root

    def drop(self, name: str, rid: str) -> None:
        write_wav(self.inbox / name, seconds=0.05)
        (self.inbox / (Path(name).stem + ".json")).write_text(json.dumps({"id": rid}))

    def look(self, after: float = 0.0) -> list[str]:
        """Let ``after`` seconds pass, rescan and step once; the names of the recordings claimed so far."""
        self.clock.advance(after)
        self.planner.rescan()
        self.planner.step()
        return [str(cast(Claimed, c).pair.audio) for c in self.pool.offered]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_pair_waits_until_both_files_have_settled(rig: Rig) -> None:
    rig.drop("a.wav", "rec-a")
    assert rig.look() == []
    assert rig.look(SETTLE - 0.1) == []
    assert rig.look(0.2) == ["a.wav"]
    assert sorted(p.name for p in rig.folders.work.iterdir()) == ["a.json", "a.wav"]


def test_a_change_starts_the_settle_wait_again(rig: Rig) -> None:
    rig.drop("a.wav", "rec-a")
    rig.look()
    rig.clock.advance(SETTLE - 0.5)
    with open(rig.inbox / "a.wav", "ab") as fh:
        fh.write(b"more")
    assert rig.look() == []
    assert rig.look(SETTLE - 0.1) == []
    assert rig.look(0.2) == ["a.wav"]


def test_a_recording_without_its_sidecar_waits_then_fails_as_missing_sidecar(rig: Rig) -> None:
    write_wav(rig.inbox / "lone.wav", seconds=0.05)
    assert rig.look() == [] and rig.look(SETTLE + 0.1) == []
    assert rig.look(TIMEOUT) == []
    error = json.loads((rig.root / "failed" / "lone.error.json").read_text())
    assert error["reason"] == "missing_sidecar" and not (rig.inbox / "lone.wav").exists()


def test_a_failure_decided_before_a_claim_has_a_failed_row_naming_its_reason_and_place(rig: Rig) -> None:
    write_wav(rig.inbox / "lone.wav", seconds=0.05)
    rig.look()
    rig.look(TIMEOUT + SETTLE)
    [row] = rig.ledger.iter_all()
    assert (row.state, row.recording_id, row.file) == (State.FAILED, "lone", "lone.wav")
    assert row.destination == str(rig.root / "failed" / "lone.wav") and os.path.exists(row.destination)
    assert (row.last_error or "").startswith("missing_sidecar: ")


def test_files_another_process_failed_first_get_no_second_row_and_no_error_file(rig: Rig) -> None:
    """On a shared inbox only the process whose move won records the failure."""
    write_wav(rig.inbox / "lone.wav", seconds=0.05)
    gone = Expired((PurePosixPath("lone.wav"),), Problem(Reason.MISSING_SIDECAR, "no sidecar"))
    log = structlog.get_logger("test")
    assert fail_unpaired(rig.folders, rig.ledger, rig.inbox, gone, rig.clock, log) is not None
    assert fail_unpaired(rig.folders, rig.ledger, rig.inbox, gone, rig.clock, log) is None
    assert len(list(rig.ledger.iter_all())) == 1
    assert sorted(p.name for p in (rig.root / "failed").iterdir()) == ["lone.error.json", "lone.wav"]


def test_a_full_pool_keeps_ready_pairs_and_feeds_them_as_room_frees(tmp_path: Path) -> None:
    rig = Rig(tmp_path, capacity=1)
    for name in ("a.wav", "b.wav", "c.wav"):
        rig.drop(name, f"rec-{name[0]}")
    rig.look()
    assert len(rig.look(SETTLE + 0.1)) == 1
    claimed = {str(cast(Claimed, rig.pool.take()).pair.audio)}
    rig.planner.step()
    assert len(rig.pool.offered) == 1  # the next one, once there was room
    claimed.add(str(cast(Claimed, rig.pool.take()).pair.audio))
    rig.planner.step()
    claimed.add(str(cast(Claimed, rig.pool.take()).pair.audio))
    assert claimed == {"a.wav", "b.wav", "c.wav"}
    assert sorted(os.listdir(rig.inbox)) == []


def test_pairs_left_in_work_are_offered_before_new_ones(rig: Rig) -> None:
    rig.folders.work.mkdir(parents=True, exist_ok=True)
    (rig.folders.work / "old.wav").write_bytes(b"RIFF")
    (rig.folders.work / "old.json").write_text('{"id": "old"}')
    rig.drop("new.wav", "rec-new")
    assert rig.look() == ["old.wav"]  # a leftover is not waited for: it was complete when claimed
    assert rig.look(SETTLE + 0.1) == ["old.wav", "new.wav"]


def test_a_file_under_an_ignored_name_is_never_taken(rig: Rig) -> None:
    (rig.inbox / "call.wav.tmp").write_bytes(b"RIFF")
    (rig.inbox / "call.json").write_text('{"id": "rec"}')
    assert rig.look() == [] and rig.look(SETTLE + TIMEOUT + 1) == []
    assert (rig.inbox / "call.wav.tmp").exists()
