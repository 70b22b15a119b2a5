"""The ledger enforces the state machine: each write is a compare-and-set on the state as read."""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path

import pytest
from support.fakes import FakeClock

from vocwatch.core.states import FINAL, TRANSITIONS, Row, State
from vocwatch.edges.ledger import Ledger, StaleRowError

SHA = "c" * 64


def _path_to(target: State) -> list[State]:
    """The shortest walk through the table from a new row to ``target``."""
    queue: deque[list[State]] = deque([[s] for s in TRANSITIONS[None] if s == State.CLAIMED])
    while queue:
        walk = queue.popleft()
        if walk[-1] == target:
            return walk
        queue.extend([*walk, n] for n in TRANSITIONS[walk[-1]] if n not in walk)
    raise AssertionError(f"{target} cannot be reached from a claim")


def _row_in(book: Ledger, state: State, rid: str = "rec-1") -> Row:
    if state in (State.DUPLICATE,):
        return book.record_terminal(rid, SHA, "x.wav", 1, state, duplicate_of="job-0")
    row = book.claim(rid, SHA, "x.wav", 1)
    assert row is not None
    for step in _path_to(state)[1:]:
        row = book.transition(row, step, job_id="job-1" if step == State.ACCEPTED else None)
    assert row.state == state
    return row


@pytest.fixture
def book(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.sqlite3", FakeClock(), holder="host-1")
    yield ledger
    ledger.close()


@pytest.mark.parametrize(("before", "after"), list(itertools.product(State, State)))
def test_a_transition_commits_only_where_the_table_allows_it(book: Ledger, before: State, after: State) -> None:
    row = _row_in(book, before)
    if after in TRANSITIONS[before]:
        moved = book.transition(row, after)
        assert moved.state == after
        assert (moved.holder is None) == (after in FINAL or after == State.RELEASED)
    else:
        with pytest.raises(AssertionError):
            book.transition(row, after)
        assert book.find("rec-1")[0].state == before


def test_a_row_changed_by_another_process_is_refused(tmp_path: Path) -> None:
    one = Ledger(tmp_path / "l.sqlite3", FakeClock(), holder="host-1")
    two = Ledger(tmp_path / "l.sqlite3", FakeClock(), holder="host-1-upload")
    try:
        read_by_one = one.claim("rec-9", SHA, "a.wav", 1)
        assert read_by_one is not None
        two.begin_attempt(two.find("rec-9")[0])  # the other process moved on
        with pytest.raises(StaleRowError):
            one.begin_attempt(read_by_one)
        assert one.find("rec-9")[0].attempts == 1
    finally:
        one.close()
        two.close()


def test_one_open_row_per_recording_and_content_across_processes(tmp_path: Path) -> None:
    one = Ledger(tmp_path / "l.sqlite3", FakeClock(), holder="host-1")
    two = Ledger(tmp_path / "l.sqlite3", FakeClock(), holder="host-1-upload")
    try:
        first = one.claim("rec-9", SHA, "a.wav", 1)
        assert first is not None and first.holder == "host-1"
        assert two.claim("rec-9", SHA, "a.wav", 1) is None  # the first holds it: decide again
        assert two.claim("rec-9", SHA, "a.wav", 1, take=first) is not None  # a dead holder's row, taken over
        assert one.claim("rec-9", SHA, "a.wav", 1, take=first) is None  # stale: as read, it is not any more
    finally:
        one.close()
        two.close()


def test_a_version_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE recordings (id INTEGER PRIMARY KEY, recording_id TEXT NOT NULL, sha256 TEXT NOT NULL,
        file TEXT NOT NULL, size INTEGER NOT NULL, state TEXT NOT NULL, job_id TEXT, job_status TEXT,
        job_finished_at REAL, job_error TEXT, next_poll_at REAL, poll_interval REAL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, duplicate_of TEXT, destination TEXT,
        created_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO recordings (recording_id, sha256, file, size, state, created_at, updated_at)
            VALUES ('r', 'x', 'a.wav', 1, 'claimed', 0, 0), ('r', 'x', 'a.wav', 1, 'uploading', 0, 0);"""
    )
    db.commit()
    db.close()
    book = Ledger(path, FakeClock(), holder="host-1")
    try:
        states = sorted(r.state for r in book.find("r"))
        assert states == [State.RELEASED, State.UPLOADING]  # the older open twin was released
        assert all(r.holder is None for r in book.find("r"))
    finally:
        book.close()
