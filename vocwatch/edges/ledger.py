"""The ledger: one SQLite row per recording, and the state machine that orders every step.

Order is the guarantee: intent is committed before the request, the job id before the files
move, and each durable commit is on disk (its WAL fsynced, a flush shared by the workers' commits made
at the same time) before the next step starts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vocwatch.core.model import Clock
from vocwatch.core.states import DURABLE, FINAL, OPEN, Row, State, allowed
from vocwatch.edges.effects import Effect, point
from vocwatch.edges.groupsync import GroupSync
from vocwatch.edges.ledger_schema import (
    _FINAL_JOBS,
    _INDEXES,
    _SCHEMA,
    AUDIO_COLUMNS,
    COLUMNS,
    SCHEMA_VERSION,
    LedgerError,
    StaleRowError,
    _row,
    migrate,
    unusable,
)

__all__ = ["AUDIO_COLUMNS", "COLUMNS", "SCHEMA_VERSION", "Ledger", "LedgerError", "Row", "StaleRowError", "unusable"]

PRUNE_BATCH = 5000
PRUNABLE = ("done", "duplicate")
RECLAIM_PAGES = 4096  # pages given back per step of the incremental vacuum (16 MiB at 4 KiB pages)


class Ledger:
    """Thread-safe: writes share one connection under a lock; each thread reads on its own (WAL)."""

    def __init__(self, path: Path, clock: Clock, *, readonly: bool = False, holder: str | None = None) -> None:
        self.path = path
        self.holder = holder  # who this process is: the name of its work folder (an open row's holder)
        self._clock = clock
        self._lock = threading.Lock()
        self._readonly = readonly
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._wal = GroupSync(self._sync_wal)
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise unusable(path, exc, readonly=readonly) from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            # Read the header now: a file that is no database must fail here, not at the first upload.
            self._db.execute("PRAGMA schema_version").fetchone()
            if not readonly:
                # Space freed by pruning can be given back (incremental vacuum). Only a new, empty file takes
                # it, and only before anything (journal_mode = WAL included) writes its first page.
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("PRAGMA journal_mode = WAL")
                # NORMAL: a commit is written to the WAL, not flushed; a durable one (we rename files on the
                # strength of it) is flushed by _write before it returns, in a flush shared by every worker's.
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.executescript(_SCHEMA)
                self._migrate()
                for index in _INDEXES:
                    self._db.execute(index)
            present = {r[1] for r in self._db.execute("PRAGMA table_info(recordings)")}
        except sqlite3.Error as exc:
            self._db.close()
            raise unusable(path, exc, readonly=readonly) from exc
        # A read-only look at a ledger of an older version is not migrated: its missing columns read as null.
        self._cols = ", ".join(c if c in present or not present else f"NULL AS {c}" for c in COLUMNS)

    def _migrate(self) -> None:
        migrate(self._db)

    def close(self) -> None:
        with self._lock:
            for reader in self._readers:
                reader.close()
            self._db.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection: reads never wait behind another thread's commit."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; ``durable`` ones are on disk before this returns: their WAL is fsynced after the
        commit, outside the lock, in a flush shared with every worker's commit made meanwhile (group commit)."""
        with self._lock:
            point(Effect.COMMIT, self.path)
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            ticket = self._wal.ticket() if durable else 0
        if durable:
            self._wal.wait(ticket)

    def _sync_wal(self) -> None:
        # The commit's frames are in the WAL (written, not yet flushed: synchronous = NORMAL); an fsync of
        # the file makes them, and every commit before them, durable: what synchronous = FULL does per commit.
        # Not a new effect at the seam: it is the second half of the COMMIT announced in _write (a process
        # that dies between the two has its commit in the WAL all the same; only a power cut tells them apart).
        fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reads ---------------------------------------------------------------------------

    def find(self, recording_id: str, sha256: str | None = None) -> list[Row]:
        if sha256 is None:
            return self._select("WHERE recording_id = ? ORDER BY id", (recording_id,))
        return self._select("WHERE recording_id = ? AND sha256 = ? ORDER BY id", (recording_id, sha256))

    def by_file(self, file: str) -> list[Row]:
        """Rows whose recording sat at ``file`` (relative to a work folder)."""
        return self._select("WHERE file = ? ORDER BY id", (file,))

    def lookup(self, ident: str) -> list[Row]:
        """Rows whose recording id or job id is ``ident``."""
        return self._select("WHERE recording_id = ? OR job_id = ? ORDER BY id", (ident, ident))

    def rows(
        self,
        *,
        state: str | None = None,
        since: float | None = None,
        recording_id: str | None = None,
        created_since: float | None = None,
    ) -> list[Row]:
        clauses, args = [], []
        # Two bounds on updated_at: without table statistics SQLite then rates the recordings_updated index
        # above a scan in id order, so `ledger list --since 1h` reads only the last hour's rows.
        since_clause = "updated_at >= ? AND updated_at < 9e999"
        for clause, value in (
            ("state = ?", state),
            (since_clause, since),
            ("recording_id = ?", recording_id),
            ("created_at >= ?", created_since),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(f"{where} ORDER BY id", tuple(args))

    def iter_all(self) -> Iterator[Row]:
        yield from self._select("ORDER BY id", ())

    def events(self, row_id: int) -> list[tuple[float, str, str | None]]:
        with self._lock:
            cur = self._db.execute("SELECT at, event, detail FROM events WHERE row_id = ? ORDER BY id", (row_id,))
            return [(float(a), str(e), d) for a, e, d in cur.fetchall()]

    def due_polls(self, now: float, limit: int = 100) -> list[Row]:
        return self._select(
            "WHERE job_id IS NOT NULL AND state IN ('accepted', 'uploaded', 'done') "
            f"AND (job_status IS NULL OR job_status NOT IN {_FINAL_JOBS}) AND next_poll_at <= ? "
            "ORDER BY next_poll_at LIMIT ?",
            (now, limit),
        )

    def settle_due(self, limit: int = 100) -> list[Row]:
        """Rows in uploaded/ whose job has ended: their files are due to move on."""
        return self._select(
            "WHERE state = 'uploaded' AND job_status IN ('completed', 'failed', 'unknown') ORDER BY id LIMIT ?",
            (limit,),
        )

    def next_poll_at(self) -> float | None:
        with self._lock:
            cur = self._db.execute(
                "SELECT MIN(next_poll_at) FROM recordings WHERE job_id IS NOT NULL "
                "AND state IN ('accepted', 'uploaded', 'done') "
                f"AND (job_status IS NULL OR job_status NOT IN {_FINAL_JOBS})"
            )
            value = cur.fetchone()[0]
        return float(value) if value is not None else None

    def _select(self, tail: str, args: tuple[Any, ...]) -> list[Row]:
        if self._readonly:
            with self._lock:
                return [_row(v) for v in self._db.execute(f"SELECT {self._cols} FROM recordings {tail}", args)]
        return [_row(v) for v in self._reader().execute(f"SELECT {self._cols} FROM recordings {tail}", args)]

    # -- writes: each is one transaction, committed before it returns; each state change a compare-and-set

    def claim(
        self,
        recording_id: str,
        sha256: str,
        file: str,
        size: int,
        take: Row | None = None,
        audio: Mapping[str, Any] | None = None,
    ) -> Row | None:
        """Open a row in ``claimed`` for this process: a new one, or ``take`` as it was read (a leftover,
        a put-back, a dead holder's). None when another process got there first: decide again. ``audio``:
        values of AUDIO_COLUMNS, set in the same commit."""
        now = self._clock.time()
        extra = {k: v for k, v in (audio or {}).items() if k in AUDIO_COLUMNS} | {"host": self.holder}
        with self._write(durable=False):
            if take is None:
                try:
                    cur = self._db.execute(
                        "INSERT INTO recordings (recording_id, sha256, file, size, state, holder, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, 'claimed', ?, ?, ?)",
                        (recording_id, sha256, file, size, self.holder, now, now),
                    )
                except sqlite3.IntegrityError:  # another process opened a row for this content meanwhile
                    return None
                row_id = int(cur.lastrowid or 0)
            else:
                assert allowed(take.state, State.CLAIMED), take.state
                try:
                    cur = self._db.execute(
                        "UPDATE recordings SET state = 'claimed', file = ?, sha256 = ?, size = ?, holder = ?, "
                        "destination = NULL, duplicate_of = NULL, "
                        "updated_at = ? WHERE id = ? AND state = ? AND holder IS ?",
                        (file, sha256, size, self.holder, now, take.id, take.state, take.holder),
                    )
                except sqlite3.IntegrityError:
                    return None
                if cur.rowcount != 1:
                    return None
                row_id = take.id
            if extra:
                self._set(row_id, now, extra)
            self._event(row_id, now, "claimed", file)
            return self._get(row_id)

    def record_terminal(self, recording_id: str, sha256: str, file: str, size: int, state: State, **fields: Any) -> Row:
        """A row that is born terminal (a duplicate, or a failure before the content was known)."""
        assert allowed(None, state) and state in FINAL, state
        now = self._clock.time()
        with self._write(durable=state in DURABLE):
            cur = self._db.execute(
                "INSERT INTO recordings (recording_id, sha256, file, size, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (recording_id, sha256, file, size, state, now, now),
            )
            row_id = int(cur.lastrowid or 0)
            self._set(row_id, now, {"host": self.holder, **fields})
            self._event(row_id, now, state, fields.get("last_error") or fields.get("duplicate_of"))
            return self._get(row_id)

    def transition(self, row: Row, state: State, event: str | None = None, **fields: Any) -> Row:
        """Move ``row`` from the state it was read in to ``state`` and set ``fields``, in one commit (on
        disk at once if DURABLE). StaleRowError if the row is no longer as read; a transition the table does
        not allow is a bug (AssertionError)."""
        assert allowed(row.state, state), f"{row.state} -> {state}"
        now = self._clock.time()
        if state in FINAL or state == State.RELEASED:
            fields = {**fields, "holder": None}
        elif state in OPEN:
            fields = {**fields, "holder": self.holder}  # whoever moves an open row holds it
        with self._write(durable=state in DURABLE):
            self._cas(row, now, {**fields, "state": state}, attempts=state == State.UPLOADING)
            detail = fields.get("last_error") or fields.get("job_id") or fields.get("destination")
            self._event(row.id, now, event or state, None if detail is None else str(detail))
            return self._get(row.id)

    def note(self, row: Row, event: str, detail: str | None = None, **fields: Any) -> Row:
        """Set ``fields`` on ``row`` in the state it was read in, durably: the intent of a step (a failure's
        or a duplicate's destination) is on disk before the files move. StaleRowError if it changed."""
        now = self._clock.time()
        with self._write(durable=True):
            self._cas(row, now, dict(fields))
            detail = detail or fields.get("destination") or fields.get("last_error")
            self._event(row.id, now, event, None if detail is None else str(detail))
            return self._get(row.id)

    def begin_attempt(self, row: Row) -> Row:
        """Record the intent to upload: from here the request may be on the wire."""
        return self.transition(row, State.UPLOADING)

    def _cas(self, row: Row, now: float, fields: dict[str, Any], *, attempts: bool = False) -> None:
        unknown = set(fields) - set(COLUMNS)
        assert not unknown, unknown
        assignments = "".join(f"{name} = ?, " for name in fields)
        bump = "attempts = attempts + 1, " if attempts else ""
        cur = self._db.execute(
            f"UPDATE recordings SET {assignments}{bump}updated_at = ? WHERE id = ? AND state = ?",
            (*fields.values(), now, row.id, row.state),
        )
        if cur.rowcount != 1:
            raise StaleRowError(f"ledger row {row.id} ({row.recording_id}) is no longer {row.state}")

    def _get(self, row_id: int) -> Row:
        return _row(self._db.execute(f"SELECT {self._cols} FROM recordings WHERE id = ?", (row_id,)).fetchone())

    def prune(self, before: float, *, batch: int = PRUNE_BATCH, stop: Any = None) -> int:
        """Delete done and duplicate rows (and their events) last changed before ``before``, in batches;
        failed rows are kept. Then give the space back (incremental vacuum). Returns the rows deleted."""
        deleted = 0
        marks = ", ".join("?" for _ in PRUNABLE)
        while stop is None or not stop.is_set():
            with self._write(durable=False):
                # One batch, picked once into a temporary table: its events, then the rows themselves.
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_batch (id INTEGER PRIMARY KEY)")
                self._db.execute("DELETE FROM prune_batch")
                self._db.execute(
                    f"INSERT INTO prune_batch SELECT id FROM recordings WHERE updated_at < ? AND state IN ({marks}) "
                    "LIMIT ?",
                    (before, *PRUNABLE, batch),
                )
                count = int(self._db.execute("SELECT COUNT(*) FROM prune_batch").fetchone()[0])
                self._db.execute("DELETE FROM events WHERE row_id IN (SELECT id FROM prune_batch)")
                self._db.execute("DELETE FROM recordings WHERE id IN (SELECT id FROM prune_batch)")
            deleted += count
            if count < batch:
                break
        if deleted:
            self.reclaim()
        return deleted

    def reclaim(self) -> bool:
        """Return free pages to the file system (incremental vacuum); False when this ledger cannot.

        A ledger file made before auto_vacuum = INCREMENTAL was set would need a full VACUUM to switch, which
        holds the database for minutes on a big ledger (every upload's commit would wait): that is never done
        here. Its freed pages are reused for new rows instead, so the file stops growing; a VACUUM while the
        daemon is stopped (sqlite3 LEDGER 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;') gives the space back.
        """
        if not self.incremental:
            return False
        while True:
            with self._lock:  # a bounded step at a time: uploads' commits slip in between
                if int(self._db.execute("PRAGMA freelist_count").fetchone()[0]) == 0:
                    return True
                # executescript: it steps the pragma to its end (execute() frees one page per call).
                self._db.executescript(f"PRAGMA incremental_vacuum({RECLAIM_PAGES});")

    @property
    def incremental(self) -> bool:
        """Does this ledger file give pruned space back (auto_vacuum = INCREMENTAL)?"""
        with self._lock:
            return int(self._db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2

    def space(self) -> tuple[int, int]:
        """(pages, free pages) of the ledger file."""
        with self._lock:
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return pages, free

    def update_job(self, row_id: int, **fields: Any) -> None:
        now = self._clock.time()
        with self._write(durable=False):
            self._set(row_id, now, fields)
            if "job_status" in fields:
                self._event(row_id, now, f"job.{fields['job_status']}", fields.get("job_error"))

    def _set(self, row_id: int, now: float, fields: dict[str, Any]) -> None:
        unknown = set(fields) - set(COLUMNS)
        assert not unknown, unknown
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sep = ", " if assignments else ""
        self._db.execute(
            f"UPDATE recordings SET {assignments}{sep}updated_at = ? WHERE id = ?",
            (*fields.values(), now, row_id),
        )

    def _event(self, row_id: int, now: float, event: str, detail: str | None) -> None:
        self._db.execute(
            "INSERT INTO events (row_id, at, event, detail) VALUES (?, ?, ?, ?)", (row_id, now, event, detail)
        )
