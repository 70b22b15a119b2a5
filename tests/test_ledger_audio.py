"""The ledger knows its minutes: version 3 columns, the migration from a version 2 file, and the report."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

from support.fakes import FakeClock

from vocwatch.cli.ledger import dispatch
from vocwatch.cli.main import _parser
from vocwatch.core.states import State
from vocwatch.edges.ledger import SCHEMA_VERSION, Ledger
from vocwatch.edges.stats import Stats

DAY = 86400.0
# The recordings table as version 2 had it (holder and unknown_since already added by its migration).
V2 = """
CREATE TABLE recordings (
    id INTEGER PRIMARY KEY, recording_id TEXT NOT NULL, sha256 TEXT NOT NULL, file TEXT NOT NULL,
    size INTEGER NOT NULL, state TEXT NOT NULL, job_id TEXT, job_status TEXT, job_finished_at REAL,
    job_error TEXT, next_poll_at REAL, poll_interval REAL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, duplicate_of TEXT, destination TEXT, unknown_since REAL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, holder TEXT);
CREATE TABLE events (id INTEGER PRIMARY KEY, row_id INTEGER NOT NULL REFERENCES recordings (id),
    at REAL NOT NULL, event TEXT NOT NULL, detail TEXT);
CREATE UNIQUE INDEX recordings_open ON recordings (recording_id, sha256) WHERE state IN ('claimed', 'uploading');
INSERT INTO recordings (recording_id, sha256, file, size, state, job_id, created_at, updated_at)
    VALUES ('old-1', 'aa', 'old-1.wav', 1000, 'done', 'job-old', 100.0, 100.0);
PRAGMA user_version = 2;
"""


def v2_ledger(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(V2)
    db.close()
    return path


def test_a_version_2_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = v2_ledger(tmp_path / "ledger.sqlite3")
    # A read-only look (vocwatch check) does not migrate: the new columns read as null.
    with_ro = Ledger(path, FakeClock(), readonly=True)
    [old] = with_ro.rows()
    with_ro.close()
    assert (old.recording_id, old.state, old.duration_seconds, old.structure) == ("old-1", "done", None, None)
    book = Ledger(path, FakeClock(), holder="host-1")
    try:
        [old] = book.rows()
        assert (old.job_id, old.duration_seconds, old.codec, old.host) == ("job-old", None, None, None)
        row = book.claim("new-1", "bb", "new-1.mp3", 2000, audio={"duration_seconds": 61.5, "codec": "mp3"})
        assert row is not None and (row.duration_seconds, row.codec, row.host) == (61.5, "mp3", "host-1")
    finally:
        book.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
    Ledger(path, FakeClock()).close()  # opening it again migrates nothing


def _deliver(book: Ledger, rid: str, size: int, seconds: float | None) -> None:
    row = book.claim(rid, rid * 2, f"{rid}.wav", size, audio={"duration_seconds": seconds, "structure": "complete"})
    assert row is not None
    row = book.begin_attempt(row)
    row = book.transition(row, State.ACCEPTED, job_id=f"job-{rid}")
    book.transition(row, State.DONE, destination=f"done/{rid}.wav")


def known_ledger(path: Path) -> None:
    """Two days of recordings of known durations, by two hosts, with failures of two reasons."""
    clock = FakeClock(start=time.time() - 3 * DAY)
    one = Ledger(path, clock, holder="host-1")
    _deliver(one, "a", 1000, 60.0)
    _deliver(one, "b", 2000, 90.0)
    one.record_terminal("c", "", "c.mp3", 500, State.FAILED, last_error="truncated: cut at byte 4320")
    clock.advance(DAY)
    two = Ledger(path, clock, holder="host-2")
    _deliver(two, "d", 4000, 30.0)
    _deliver(two, "e", 8000, None)  # no duration known: minutes is a lower bound
    two.record_terminal("f", "", "f.wav", 10, State.FAILED, last_error="rejected: HTTP 422 bad")
    two.record_terminal("g", "", "g.wav", 10, State.FAILED, last_error="truncated: declared 9 bytes")
    two.record_terminal("a", "aa", "a2.wav", 1000, State.DUPLICATE, duplicate_of="job-a", duration_seconds=60.0)
    one.close()
    two.close()


def report(path: Path, *extra: str, tty: bool = False) -> str:
    args = _parser().parse_args(["ledger", "report", *extra])

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Out()
    book = Ledger(path, FakeClock())
    try:
        assert dispatch(args, book, out) == 0
    finally:
        book.close()
    return out.getvalue()


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_report_in_total(tmp_path: Path) -> None:
    known_ledger(tmp_path / "l.db")
    [total] = lines(report(tmp_path / "l.db", "--since", "30d"))
    assert total == {
        "total": "all",
        "recordings": 8,
        "delivered": 4,
        "minutes": 3.0,  # 60 + 90 + 30 seconds; e's duration is unknown
        "bytes": 15000,
        "unknown_duration": 1,
        "failed": 3,
        "failures": {"rejected": 1, "truncated": 2},
    }


def test_report_by_day_host_and_state(tmp_path: Path) -> None:
    known_ledger(tmp_path / "l.db")
    days = lines(report(tmp_path / "l.db", "--since", "30d", "--by", "day"))
    assert [(d["recordings"], d["minutes"], d["bytes"], d["failures"]) for d in days] == [
        (3, 2.5, 3000, {"truncated": 1}),
        (5, 0.5, 12000, {"rejected": 1, "truncated": 1}),
    ]
    hosts = {h["host"]: h for h in lines(report(tmp_path / "l.db", "--by", "host"))}
    assert (hosts["host-1"]["minutes"], hosts["host-2"]["delivered"]) == (2.5, 2)
    states = {s["state"]: s for s in lines(report(tmp_path / "l.db", "--by", "state"))}
    assert (states["done"]["recordings"], states["failed"]["failed"], states["duplicate"]["delivered"]) == (4, 3, 0)


def test_report_window_leaves_out_older_rows(tmp_path: Path) -> None:
    known_ledger(tmp_path / "l.db")
    [recent] = lines(report(tmp_path / "l.db", "--since", "60h"))
    assert (recent["recordings"], recent["minutes"]) == (5, 0.5)


def test_report_is_a_table_on_a_terminal(tmp_path: Path) -> None:
    known_ledger(tmp_path / "l.db")
    head, first, second, note = report(tmp_path / "l.db", "--by", "host", tty=True).splitlines()
    assert head.split()[:6] == ["HOST", "RECORDINGS", "DELIVERED", "MINUTES", "BYTES", "FAILED"]
    assert first.split()[:6] == ["host-1", "3", "2", "2.50", "3000", "1"]
    assert second.split()[:6] == ["host-2", "5", "2", "0.50+", "12000", "2"]
    assert "rejected 1, truncated 1" in second and "no known duration" in note


def test_the_metric_counts_delivered_seconds_of_audio() -> None:
    stats = Stats()
    stats.finished("done", nbytes=10, seconds=0.1, audio_s=61.5)
    stats.finished("done", nbytes=10, seconds=0.1, audio_s=30.0)
    stats.finished("failed", audio_s=999.0)
    assert stats.registry.get_sample_value("vocwatch_audio_seconds_total") == 91.5
