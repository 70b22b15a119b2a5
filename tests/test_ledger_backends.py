"""The Ledger surface both backends offer alike (edges.ledgers.LedgerStore): audio facts and host at claim,
a move's intent noted before its files move, a taken row's old move forgotten, any non-final job polled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from support.fakes import FakeClock

from vocwatch.core.states import State
from vocwatch.edges.ledger import Ledger, StaleRowError
from vocwatch.edges.ledger_pg import _MIGRATIONS, SCHEMA_VERSION, PgLedger
from vocwatch.edges.ledgers import LedgerStore


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.fleet)])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    clock = FakeClock()
    ledger: LedgerStore
    if request.param == "sqlite":
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock, holder="host-1")
    else:
        pg = PgLedger(str(request.getfixturevalue("pg_url")), clock, holder="host-1")
        assert pg.acquire_lease()
        ledger = pg
    try:
        yield ledger
    finally:
        ledger.close()


def test_a_claim_keeps_the_audio_facts_and_the_host_outlives_the_holder(book: LedgerStore) -> None:
    row = book.claim("r1", "aa", "r1.mp3", 10, audio={"duration_seconds": 61.5, "codec": "mp3", "channels": 1})
    assert row is not None
    assert (row.duration_seconds, row.codec, row.channels, row.sample_rate) == (61.5, "mp3", 1, None)
    assert (row.holder, row.host) == ("host-1", "host-1")
    ended = book.transition(row, State.FAILED, last_error="x")
    assert (ended.holder, ended.host, ended.codec) == (None, "host-1", "mp3")
    born = book.record_terminal("r2", "bb", "r2.mp3", 10, State.DUPLICATE, duplicate_of="job-1")
    assert born.host == "host-1"
    assert [r.recording_id for r in book.rows(created_since=0.0)] == ["r1", "r2"]


def test_note_sets_a_moves_intent_on_the_row_as_read_and_refuses_a_stale_one(book: LedgerStore) -> None:
    row = book.claim("r1", "aa", "r1.mp3", 10)
    assert row is not None
    noted = book.note(row, "duplicate.decided", destination="/done/r1.mp3", duplicate_of="job-1")
    assert (noted.state, noted.destination, noted.duplicate_of) == (State.CLAIMED, "/done/r1.mp3", "job-1")
    assert "duplicate.decided" in [event for _, event, _ in book.events(row.id)]
    ended = book.transition(noted, State.DUPLICATE, destination=noted.destination)  # claimed -> duplicate
    assert (ended.state, ended.holder) == (State.DUPLICATE, None)
    with pytest.raises(StaleRowError):
        book.note(noted, "again", destination="/elsewhere")


def test_a_row_taken_again_forgets_the_move_it_had_decided(book: LedgerStore) -> None:
    row = book.claim("r1", "aa", "r1.mp3", 10)
    assert row is not None
    noted = book.note(row, "failure.decided", destination="/failed/r1.mp3", duplicate_of="job-9")
    released = book.transition(noted, State.RELEASED)
    taken = book.claim("r1", "aa", "r1.mp3", 10, released)
    assert taken is not None and taken.id == row.id
    assert (taken.state, taken.destination, taken.duplicate_of) == (State.CLAIMED, None, None)


def test_any_job_status_but_a_final_one_is_polled_again(book: LedgerStore) -> None:
    ids = {}
    for rid, status in (("queued", "queued"), ("started", "started"), ("none", None), ("completed", "completed")):
        row = book.claim(rid, "aa", f"{rid}.mp3", 10)
        assert row is not None
        row = book.transition(book.begin_attempt(row), State.ACCEPTED, job_id=f"job-{rid}", next_poll_at=5.0)
        book.update_job(row.id, job_status=status, next_poll_at=5.0)
        ids[rid] = row.id
    assert sorted(r.recording_id for r in book.due_polls(10.0)) == ["none", "queued", "started"]
    assert book.next_poll_at() == 5.0


@pytest.mark.fleet
def test_a_version_1_fleet_schema_gains_the_audio_columns_and_keeps_its_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA vocwatch")
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier("vocwatch")))
        conn.execute(_MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO recordings (recording_id, sha256, file, size, state, job_id, host, created_at, updated_at) "
            "VALUES ('old-1', 'aa', 'old-1.wav', 1000, 'done', 'job-old', 'host-0', 100.0, 100.0)"
        )
    book = PgLedger(pg_url, FakeClock(), holder="host-1")
    try:
        [old] = book.rows()
        assert (old.job_id, old.host, old.duration_seconds, old.structure) == ("job-old", "host-0", None, None)
        assert book.acquire_lease()
        row = book.claim("new-1", "bb", "new-1.mp3", 2000, audio={"structure": "complete", "sample_rate": 8000})
        assert row is not None and (row.structure, row.sample_rate) == ("complete", 8000)
    finally:
        book.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM vocwatch.schema_version").fetchone() == (SCHEMA_VERSION,) == (2,)


def test_prune_drops_old_done_and_duplicate_rows_in_batches_and_keeps_failures(book: LedgerStore) -> None:
    for i in range(5):
        row = book.claim(f"d{i}", "aa", f"d{i}.mp3", 10)
        assert row is not None
        book.transition(book.transition(book.begin_attempt(row), State.ACCEPTED, job_id=f"j{i}"), State.DONE)
    book.record_terminal("dup", "bb", "dup.mp3", 10, State.DUPLICATE, duplicate_of="j0")
    book.record_terminal("bad", "cc", "bad.mp3", 10, State.FAILED, last_error="x")
    assert book.prune(float("inf"), batch=2) == 6
    assert [r.recording_id for r in book.rows()] == ["bad"]
    assert book.prune(float("inf")) == 0
