"""The SQLite ledger's schema, its versioned migrations, its columns, and its errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from vocwatch.core.states import FINAL_JOB, Row, State

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY,
    recording_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    job_id TEXT,
    job_status TEXT,
    job_finished_at REAL,
    job_error TEXT,
    next_poll_at REAL,
    poll_interval REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    duplicate_of TEXT,
    destination TEXT,
    unknown_since REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_key ON recordings (recording_id, sha256);
CREATE INDEX IF NOT EXISTS recordings_state ON recordings (state);
CREATE INDEX IF NOT EXISTS recordings_job ON recordings (job_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    row_id INTEGER NOT NULL REFERENCES recordings (id),
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_row ON events (row_id);
"""
SCHEMA_VERSION = 3
# Version 2: the holder of an open row, and at most one open row per recording and content.
# Version 3: what the recording holds (duration, codec, sample rate, channels; null where unknown) and what
# its own structure said (``structure``: complete, placeholder: ..., unknown: ..., truncated: ...), and which
# instance took it (``host``: the holder that opened the row, kept once the row ends and ``holder`` is cleared).
_MIGRATE_2 = """
UPDATE recordings SET state = 'released' WHERE state IN ('claimed', 'uploading') AND id NOT IN (
    SELECT MAX(id) FROM recordings WHERE state IN ('claimed', 'uploading') GROUP BY recording_id, sha256);
CREATE UNIQUE INDEX IF NOT EXISTS recordings_open ON recordings (recording_id, sha256)
    WHERE state IN ('claimed', 'uploading');
"""

# Indexes added outside the numbered migrations, each guarded by IF NOT EXISTS (so they merge with any
# schema version): pruning by age (ledger.keep_days) and `ledger list --since` read rows by updated_at.
_INDEXES = ("CREATE INDEX IF NOT EXISTS recordings_updated ON recordings (updated_at)",)
# Rows pruned per transaction: each batch is short, so uploads' commits never wait long behind it.

COLUMNS = [
    "id",
    "recording_id",
    "sha256",
    "file",
    "size",
    "state",
    "job_id",
    "job_status",
    "job_finished_at",
    "job_error",
    "next_poll_at",
    "poll_interval",
    "attempts",
    "last_error",
    "duplicate_of",
    "destination",
    "unknown_since",
    "created_at",
    "updated_at",
    "holder",
    "duration_seconds",
    "codec",
    "sample_rate",
    "channels",
    "structure",
    "host",
]
_COLS = ", ".join(COLUMNS)
# A job is followed until one of these; any other status (documented or not) is asked about again.
_FINAL_JOBS = "(" + ", ".join(f"'{j}'" for j in sorted(FINAL_JOB)) + ")"
# Columns that migrations add, with their types (a fresh ledger gets them the same way).
_ADDED = {
    "holder": "TEXT",
    "unknown_since": "REAL",
    "duration_seconds": "REAL",
    "codec": "TEXT",
    "sample_rate": "INTEGER",
    "channels": "INTEGER",
    "structure": "TEXT",
    "host": "TEXT",
}
AUDIO_COLUMNS = ("duration_seconds", "codec", "sample_rate", "channels", "structure")


class StaleRowError(RuntimeError):
    """A compare-and-set found the row in another state than its caller read: a bug, or another process."""


class LedgerError(Exception):
    """The ledger file cannot be opened or is not a database: one line naming the file and what to do."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"ledger {path}: {problem}; {fix}")
        self.path = path


def unusable(path: Path, exc: Exception, *, readonly: bool = False) -> LedgerError:
    """What is wrong with the ledger file at ``path``, told from the file itself rather than SQLite's words."""
    uid = os.getuid()
    if path.is_dir():
        return LedgerError(
            path,
            "is a directory, not a ledger file",
            "set ledger.path to a file name (it is created at first start), or move the directory aside",
        )
    if os.path.lexists(path) and not os.access(path, os.R_OK if readonly else os.R_OK | os.W_OK):
        return LedgerError(
            path,
            f"cannot be {'read' if readonly else 'read and written'} by uid {uid} (permission denied)",
            f"fix its owner or mode (e.g. chown vocwatch: {path}; chmod 600 {path})",
        )
    if not readonly and not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite keeps its -wal and -shm files beside the ledger.
        return LedgerError(
            path,
            f"its folder {path.parent} is not writable by uid {uid}",
            "fix the folder's owner or mode (e.g. install -d -o vocwatch FOLDER)",
        )
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and any(w in text for w in ("not a database", "malformed", "corrupt")):
        return LedgerError(
            path,
            f"is not a SQLite database, or is corrupt ({text})",
            "restore it from a backup, or move it aside (mv it to a .bad name) to start an empty ledger, "
            "which no longer knows what was uploaded: recordings dropped again are sent again",
        )
    return LedgerError(
        path,
        f"cannot be opened ({type(exc).__name__}: {text})",
        "check the file, its folder and the disk; restore it from a backup or move it aside",
    )


def migrate(db: sqlite3.Connection) -> None:
    """Bring a ledger opened for writing up to SCHEMA_VERSION, in one transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        names = {r[1] for r in db.execute("PRAGMA table_info(recordings)")}
        for column, kind in _ADDED.items():
            if column not in names:
                db.execute(f"ALTER TABLE recordings ADD COLUMN {column} {kind}")
        if version < 2:
            for statement in _MIGRATE_2.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _row(values: tuple[Any, ...]) -> Row:
    fields = dict(zip(COLUMNS, values, strict=True))
    fields["state"] = State(fields["state"])
    return Row(**fields)
