"""Upgrading over a ledger the previous version wrote, whose rows hold a bare sha256 hex (this version writes
``blake3:<hex>``): the same recording is still a duplicate, a row it left uploading keeps its Idempotency-Key,
and other content under the same id is still another recording. In the daemon and in ``vocwatch upload``, on
SQLite and on the fleet's PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import Spool, drop, running, wait_for

from vocwatch.core.model import Pair
from vocwatch.core.states import FINAL, Row, State
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.folders import Claimed
from vocwatch.edges.ledger_pg import PgLedger
from vocwatch.edges.ledgers import LedgerStore, open_ledger
from vocwatch.runtime import pipeline, settle
from vocwatch.runtime.daemon import build
from vocwatch.testing.simulator import Simulator

HOST = "host-a"  # the instance before and after the upgrade


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.fleet)])
def configure(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """make_settings for this instance, on the backend under test."""
    url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))

    def make(**overrides: Any) -> Settings:
        if url is not None:
            overrides["ledger__url"] = url
        return make_settings(folders__instance=HOST, **overrides)

    return make


def _book(settings: Settings) -> LedgerStore:
    """The ledger as the previous version held it: the same schema, its rows keyed by a bare sha256."""
    book = open_ledger(settings.ledger, SystemClock(), holder=HOST)
    if isinstance(book, PgLedger):
        assert book.acquire_lease()
    return book


def _rows(settings: Settings) -> list[Row]:
    book = open_ledger(settings.ledger, SystemClock(), readonly=True)
    try:
        return list(book.iter_all())
    finally:
        book.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_done_row(settings: Settings, rid: str, sha: str, file: str = "old.wav") -> None:
    book = _book(settings)
    try:
        row = book.claim(rid, sha, file, 1000)
        assert row is not None
        row = book.transition(book.begin_attempt(row), State.ACCEPTED, job_id="job-old", destination=f"/done/{file}")
        book.transition(row, State.DONE)
    finally:
        book.close()


def _stage(tmp_path: Path, name: str, rid: str) -> tuple[Path, Path]:
    """A pair made outside the inbox, so its sha256 is known before anything sees it."""
    return drop(tmp_path / "stage", name, rid)


def _into(folder: Path, pair: tuple[Path, Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in pair:  # the recording first, its sidecar last: as a careful writer does
        os.rename(path, folder / path.name)


def _settle(settings: Settings, n: int) -> list[Row]:
    with running(settings):
        wait_for(lambda: len(rows := _rows(settings)) == n and all(r.state in FINAL for r in rows), what="settled")
    return _rows(settings)


def test_a_recording_accepted_under_sha256_and_dropped_again_is_a_duplicate(
    spool: Spool, sim: Simulator, configure: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = configure()
    pair = _stage(tmp_path, "a.wav", "rec-a")
    _old_done_row(settings, "rec-a", _sha256(pair[0]))
    _into(spool.inbox, pair)
    old, new = _settle(settings, 2)
    assert sim.state.requests == 0
    assert (new.state, new.duplicate_of) == (State.DUPLICATE, "job-old")
    assert new.sha256.startswith("blake3:") and old.sha256 == _sha256(spool.done / "a.wav")


def test_a_backfill_over_a_sha256_ledger_sends_no_duplicate(
    spool: Spool, sim: Simulator, configure: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = configure()
    backlog = tmp_path / "old-recordings"
    pair = _stage(tmp_path, "b.wav", "rec-b")
    _old_done_row(settings, "rec-b", _sha256(pair[0]))
    _into(backlog, pair)
    done = subprocess.run(
        [sys.executable, "-m", "vocwatch", "upload", "--config", str(tmp_path / "config.toml"), str(backlog)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sim.state.requests == 0
    rows = _rows(settings)
    assert [(r.state, r.job_id or r.duplicate_of) for r in rows] == [
        (State.DONE, "job-old"),
        (State.DUPLICATE, "job-old"),
    ]


def test_a_row_left_uploading_by_the_previous_version_is_sent_again_with_the_same_idempotency_key(
    spool: Spool, sim: Simulator, configure: Callable[..., Settings]
) -> None:
    settings = configure()
    claimed = _claimed(settings, spool, "d.wav", "rec-d")
    sha = _sha256(claimed.audio)
    book = _book(settings)
    row = book.claim("rec-d", sha, "d.wav", claimed.audio.stat().st_size)
    assert row is not None
    book.begin_attempt(row)  # the request may have been on the wire when the old version stopped
    book.close()
    [row] = _settle(settings, 1)
    assert [r.idempotency_key for r in sim.state.received] == [f"rec-d-{sha}"]
    assert (row.state, row.attempts, row.sha256) == (State.DONE, 2, sha)  # the row keeps the digest it had


@pytest.mark.parametrize("on_conflict", ["fail", "upload"])
def test_other_content_under_the_id_of_a_sha256_row_is_another_recording(
    spool: Spool, sim: Simulator, configure: Callable[..., Settings], tmp_path: Path, on_conflict: str
) -> None:
    settings = configure(upload__on_conflict=on_conflict)
    _old_done_row(settings, "rec-c", hashlib.sha256(b"what the old version sent").hexdigest())
    drop(spool.inbox, "c.wav", "rec-c")
    old, new = _settle(settings, 2)
    assert old.state == State.DONE
    if on_conflict == "fail":
        assert (new.state, sim.state.requests) == (State.FAILED, 0)
        assert new.last_error is not None and new.last_error.startswith("conflict")
    else:
        assert (new.state, len(sim.state.received)) == (State.DONE, 1)
        assert new.sha256.startswith("blake3:") and new.job_id != "job-old"


def test_no_sha256_is_computed_when_no_row_holds_one(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common path hashes once: a new recording, and a copy of it dropped again (a BLAKE3 duplicate)."""
    calls: list[int] = []

    def counted(fd: int) -> str:
        calls.append(fd)
        return hashlib.sha256(os.pread(fd, 1 << 30, 0)).hexdigest()

    monkeypatch.setattr(pipeline, "sha256_of", counted)
    monkeypatch.setattr(settle, "sha256_of", counted)
    settings = make_settings()
    with running(settings):
        drop(spool.inbox, "n.wav", "rec-n")
        wait_for(lambda: [r.state for r in spool.rows()] == [State.DONE], what="uploaded")
        drop(spool.inbox, "again/n.wav", "rec-n")
        wait_for(lambda: [r.state for r in spool.rows()] == [State.DONE, State.DUPLICATE], what="its duplicate")
    assert calls == [] and len(sim.state.received) == 1


def _claimed(settings: Settings, spool: Spool, name: str, rid: str) -> Claimed:
    """A pair in this instance's work/ folder, as a claim before the upgrade left it."""
    drop(spool.inbox, name, rid)
    parts = build(settings)
    try:
        parts.folders.ensure()
        claimed = parts.folders.claim(Pair(PurePosixPath(name), PurePosixPath(name).with_suffix(".json")))
    finally:
        parts.close()
    assert claimed is not None
    return claimed
