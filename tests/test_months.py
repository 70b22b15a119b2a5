"""Running for months, with real folders, a real daemon against the simulator, and a clock the test moves:
done_action = delete, retention, the upload window, the upload order, done_layout, pruning the ledger."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Spool, drop, running, wait_for
from support.fakes import CrashAt, FakeClock, ShiftedClock
from support.world import World

from vocwatch.core.journey import DoneAction
from vocwatch.core.states import State
from vocwatch.edges.effects import Effect, listening
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime.housekeeping import Housekeeping, expired

DAY = 86400.0


def _local(hour: int, minute: int, second: int = 0, days: int = 0) -> float:
    base = datetime.now().replace(hour=hour, minute=minute, second=second, microsecond=0)
    return (base + timedelta(days=days)).timestamp()


# -- folders.done_action = "delete" --------------------------------------------------------------------


def test_delete_after_acceptance_keeps_the_row_and_its_digest(spool: Spool, make_settings: Callable[..., Any]) -> None:
    with running(make_settings(folders__done_action="delete")):
        drop(spool.inbox, "call.wav", "rec-1")
        wait_for(lambda: [r for r in spool.rows() if r.state == State.DONE], what="the row done")
        wait_for(lambda: not spool.files(spool.inbox), what="the inbox empty")
    assert spool.files(spool.done) == [] and not list(spool.work.rglob("*.*"))
    (row,) = spool.rows()
    assert row.state == State.DONE and row.job_id and len(row.sha256) == 71 and row.destination is None


def test_a_duplicate_is_deleted_too_and_its_row_kept(spool: Spool, make_settings: Callable[..., Any]) -> None:
    with running(make_settings(folders__done_action="delete")):
        drop(spool.inbox, "call.wav", "rec-1")
        wait_for(lambda: [r for r in spool.rows() if r.state == State.DONE], what="the first row done")
        drop(spool.inbox, "call.wav", "rec-1")  # the same content again: its job's duplicate
        wait_for(lambda: [r for r in spool.rows() if r.state == State.DUPLICATE], what="the duplicate's row")
        wait_for(lambda: not spool.files(spool.inbox), what="the inbox empty")
    assert spool.files(spool.done) == [] and not list(spool.work.rglob("*.*"))
    done, dup = sorted(spool.rows(), key=lambda r: r.id)
    assert dup.state == State.DUPLICATE and dup.duplicate_of == done.job_id and dup.destination is None


class _CrashBeforeFirstUnlinkInWork:
    """Dies just before the first file of the pair is deleted from work/: the row is durable, the files stay."""

    def __init__(self) -> None:
        self.fired = False

    def before(self, effect: Effect, target: str) -> None:
        if effect == Effect.UNLINK and "/work/" in target and not self.fired:
            self.fired = True
            raise _Died(target)


class _Died(BaseException):
    pass


def test_a_crash_between_the_row_and_the_unlink_deletes_at_the_next_start_and_never_resends(tmp_path: Path) -> None:
    world = World(tmp_path, done_action=DoneAction.DELETE)
    world.start()
    world.drop("a.wav", "rec-a", b"RIFF\x10\x00\x00\x00WAVEfmt " + b"a" * 300)
    crash = _CrashBeforeFirstUnlinkInWork()
    try:
        with listening(crash):
            claimed = world.claim(world.ready()[0])
            assert claimed is not None
            world.journey(claimed)
    except _Died:
        pass
    world.crash()
    assert crash.fired and sorted(world.files("work")) == ["host-1/a.json", "host-1/a.wav"]
    process = world.start()
    assert [r.state for r in process.ledger.iter_all()] == [State.ACCEPTED]  # durable before any unlink
    for leftover in world.leftovers():
        assert world.journey(leftover) == "done"
    rows = list(process.ledger.iter_all())
    world.crash()
    assert world.files("work") == [] and world.files("done") == [] and world.files("inbox") == []
    assert [r.state for r in rows] == [State.DONE] and rows[0].sha256
    assert len(world.uploader.received) == 1  # never uploaded again


def test_the_crash_point_walk_covers_delete_too(tmp_path: Path) -> None:
    """(tests/test_crash_points.py runs every effect with done_action = delete; this is its smoke test.)"""
    counter = CrashAt()
    world = World(tmp_path, done_action=DoneAction.DELETE)
    world.start()
    world.drop("a.wav", "rec-a", b"RIFF\x10\x00\x00\x00WAVEfmt " + b"a" * 300)
    with listening(counter):
        claimed = world.claim(world.ready()[0])
        assert claimed is not None
        world.journey(claimed)
    world.crash()
    unlinks = [t for e, t in counter.seen if e == Effect.UNLINK]
    commits = [i for i, (e, _) in enumerate(counter.seen) if e == Effect.COMMIT]
    first_unlink = next(i for i, (e, _) in enumerate(counter.seen) if e == Effect.UNLINK)
    assert unlinks[0].endswith("a.json") and unlinks[1].endswith("a.wav")  # the sidecar first
    assert len([c for c in commits if c < first_unlink]) == 3  # claim, intent, job id: all before any unlink


# -- folders.done_retention_days -----------------------------------------------------------------------


def _spool_folders(root: Path) -> Folders:
    f = Folders(
        inbox=root / "inbox",
        work=root / "work" / "host-1",
        done=root / "done",
        failed=root / "failed",
        uploaded=root / "uploaded",
    )
    f.ensure()
    f.inbox.mkdir(parents=True, exist_ok=True)
    return f


def _pair(folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.wav").write_bytes(b"RIFF" + b"x" * 100)
    (folder / f"{stem}.json").write_text(json.dumps({"id": stem}))


def test_retention_deletes_old_pairs_from_done_and_leaves_failed_inbox_and_work_alone(tmp_path: Path) -> None:
    folders = _spool_folders(tmp_path)
    _pair(tmp_path / "done", "flat")
    _pair(tmp_path / "done" / "2026" / "11" / "25", "dated")
    _pair(tmp_path / "failed", "bad")
    (tmp_path / "failed" / "bad.error.json").write_text("{}")
    _pair(tmp_path / "inbox", "waiting")
    _pair(tmp_path / "work" / "host-1", "claimed")
    _pair(tmp_path / "uploaded", "pending")
    kept = ("failed", "inbox", "work", "uploaded")
    before = {d: sorted(p.name for p in (tmp_path / d).rglob("*") if p.is_file()) for d in kept}
    ledger = Ledger(tmp_path / "ledger.sqlite3", FakeClock())
    clock = FakeClock(time.time() + 29 * DAY)  # files made now are 29 days old: kept
    keeper = Housekeeping(folders=folders, ledger=ledger, clock=clock, retention_days=30, keep_days=0)
    assert keeper.run_once()["done_pairs_deleted"] == 0
    assert len([p for p in (tmp_path / "done").rglob("*") if p.is_file()]) == 4
    clock.now = time.time() + 31 * DAY  # now 31 days old
    summary = keeper.run_once()
    assert summary["done_pairs_deleted"] == 2 and summary["done_files_deleted"] == 4
    assert [p for p in (tmp_path / "done").rglob("*")] == []  # the empty date folders went too
    assert (tmp_path / "done").is_dir()
    after = {d: sorted(p.name for p in (tmp_path / d).rglob("*") if p.is_file()) for d in before}
    assert after == before
    ledger.close()


@pytest.mark.parametrize(
    ("ctimes", "gone"),
    [([10.0, 20.0], True), ([10.0, 40.0], False), ([40.0], False), ([29.9], True), ([], False)],
)
def test_a_pair_leaves_done_only_when_all_its_files_are_older_than_the_cutoff(ctimes: list[float], gone: bool) -> None:
    assert expired(ctimes, cutoff=30.0) is gone


# -- ledger.keep_days ---------------------------------------------------------------------------------


def test_pruning_a_million_rows_keeps_failed_and_recent_rows_and_gives_space_back(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    now = 1_800_000_000.0
    Ledger(path, FakeClock(now)).close()
    with sqlite3.connect(path) as db:  # bulk: one statement, a million rows, 10% failed, 1% recent
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
            "INSERT INTO recordings (recording_id, sha256, file, size, state, job_id, created_at, updated_at) "
            "SELECT i, printf('%x', i), i, 100, "
            "CASE WHEN i % 10 = 0 THEN 'failed' WHEN i % 7 = 0 THEN 'duplicate' ELSE 'done' END, i, "
            "?, CASE WHEN i > 990000 THEN ? ELSE ? END FROM n",
            (now - 100 * DAY, now - DAY, now - 100 * DAY),
        )
        db.execute("INSERT INTO events (row_id, at, event) SELECT id, updated_at, state FROM recordings")
    ledger = Ledger(path, FakeClock(now))
    pages_before, _ = ledger.space()
    keeper = Housekeeping(
        folders=_spool_folders(tmp_path / "spool"), ledger=ledger, clock=FakeClock(now), retention_days=0, keep_days=30
    )
    summary = keeper.run_once()
    counts = dict(sqlite3.connect(path).execute("SELECT state, COUNT(*) FROM recordings GROUP BY state").fetchall())
    assert counts["failed"] == 100000  # failed rows are kept, however old
    assert counts.get("done", 0) + counts.get("duplicate", 0) == 9000  # the last day's
    assert summary["ledger_rows_pruned"] == 1000000 - 100000 - 9000
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM events").fetchone()[0] == 109000
    pages_after, free_after = ledger.space()
    assert pages_after < pages_before / 3 and free_after == 0  # the space went back to the file system
    ledger.close()


def test_a_ledger_from_before_incremental_vacuum_is_pruned_but_never_fully_vacuumed(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # auto_vacuum NONE, as every ledger made before this version
        db.execute("CREATE TABLE t (x)")
    ledger = Ledger(path, FakeClock(1_800_000_000.0))
    assert not ledger.incremental
    ledger.claim("rec-1", "a" * 64, "a.wav", 1)
    (row,) = ledger.find("rec-1")
    ledger.transition(ledger.begin_attempt(row), State.ACCEPTED, job_id="j", destination="/d/a.wav")
    ledger.transition(ledger.find("rec-1")[0], State.DONE)
    log: list[str] = []
    keeper = Housekeeping(
        folders=_spool_folders(tmp_path / "spool"),
        ledger=ledger,
        clock=FakeClock(1_800_000_000.0 + 100 * DAY),
        retention_days=0,
        keep_days=30,
        log=_Names(log),
    )
    assert keeper.run_once()["ledger_rows_pruned"] == 1
    keeper.run_once()
    assert log.count("ledger.space_reused") == 1 and not ledger.incremental
    ledger.close()


class _Names:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def info(self, event: str, **_: Any) -> None:
        self.names.append(event)

    exception = info


# -- upload.window and upload.order -------------------------------------------------------------------


def test_a_window_opens_and_closes_and_a_backlog_goes_oldest_first(
    spool: Spool, make_settings: Callable[..., Any]
) -> None:
    clock = ShiftedClock(_local(19, 59, 0))
    settings = make_settings(upload__window="20:00-06:00", upload__workers=1)
    order = [3, 0, 5, 1, 4, 2]  # file i is the order[i]-th oldest
    base = clock.time() - 3600
    for i, rank in enumerate(order):
        audio, side = drop(spool.inbox, f"call-{i}.wav", f"rec-{i}")
        for path in (audio, side):
            os.utime(path, (base + rank * 60, base + rank * 60))
    with running(settings, clock=clock) as daemon:
        wait_for(lambda: len(daemon.planner._ready) == 6, what="the backlog settled and ready")
        assert daemon.status_line().startswith("waiting for the upload window (opens 20:00)")
        assert spool.rows() == [] and daemon.parts.stats.registry.get_sample_value("vocwatch_upload_window_open") == 0
        assert daemon.oldest_pending_age() >= 3600 - 60
        clock.jump_to(_local(20, 0, 1))  # the window opens
        wait_for(lambda: len(spool.files(spool.done)) == 12, what="the backlog uploaded")
        claimed = [r.recording_id for r in sorted(spool.rows(), key=lambda r: r.id)]
        assert claimed == [f"rec-{order.index(rank)}" for rank in range(6)]  # oldest first
        assert not daemon.status_line().startswith("waiting")
        wait_for(lambda: daemon.oldest_pending_age() == 0, what="nothing pending")
        clock.jump_to(_local(6, 0, 1, days=1))  # it closes: nothing new is claimed
        drop(spool.inbox, "late.wav", "rec-late")
        wait_for(lambda: len(daemon.planner._ready) == 1, what="the late pair ready")
        assert daemon.status_line().startswith("waiting for the upload window (opens 20:00)")
        assert "late.wav" not in spool.files(spool.done) and sorted(spool.files(spool.inbox)) == [
            "late.json",
            "late.wav",
        ]
        clock.jump_to(_local(20, 0, 1, days=1))
        wait_for(lambda: "late.wav" in spool.files(spool.done), what="the late pair in the next window")


def test_done_layout_files_pairs_by_acceptance_date(spool: Spool, make_settings: Callable[..., Any]) -> None:
    clock = ShiftedClock(datetime(2026, 11, 25, 13, 0).timestamp())
    with running(make_settings(folders__done_layout="{accepted:%Y/%m/%d}"), clock=clock):
        drop(spool.inbox, "sub/call.wav", "rec-1")
        wait_for(lambda: len(spool.files(spool.done)) == 2, what="the pair in done/")
    assert spool.files(spool.done) == ["2026/11/25/sub/call.json", "2026/11/25/sub/call.wav"]


def test_done_layout_files_a_duplicate_by_date_too(spool: Spool, make_settings: Callable[..., Any]) -> None:
    clock = ShiftedClock(datetime(2026, 11, 25, 13, 0).timestamp())
    with running(make_settings(folders__done_layout="{accepted:%Y/%m}"), clock=clock):
        drop(spool.inbox, "call.wav", "rec-1")
        wait_for(lambda: len(spool.files(spool.done)) == 2, what="the pair in done/")
        drop(spool.inbox, "call.wav", "rec-1")
        wait_for(lambda: len(spool.files(spool.done)) == 4, what="the duplicate in done/")
    assert all(name.startswith("2026/11/") for name in spool.files(spool.done))
    assert {r.state for r in spool.rows()} == {State.DONE, State.DUPLICATE}
