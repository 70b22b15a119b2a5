"""The fleet ledger: the same rows and state machine as the SQLite ledger, in one PostgreSQL schema.

Several daemons (on one host or many, on one share) write here at once. Every state change is a
compare-and-set on the row's state *and* its holder, so a daemon whose claims were taken over can no longer
move them. Each daemon holds its open rows under a lease (the ``leases`` table, in the database's clock);
claims and the intent to send need a live lease, so a daemon that lost its lease sends nothing.

The database unreachable: every call waits (logging once) and goes on by itself when it is back; a write
whose commit may or may not have landed is recognised by its operation id (``op_id``) and not repeated.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from vocwatch.core.model import Clock

# Every commit is durable here (the server's synchronous_commit): no DURABLE distinction as in SQLite.
from vocwatch.core.states import FINAL, FINAL_JOB, OPEN, Row, State, allowed
from vocwatch.edges.effects import Effect, point
from vocwatch.edges.ledger import AUDIO_COLUMNS, PRUNABLE, PRUNE_BATCH, StaleRowError
from vocwatch.edges.ledger import COLUMNS as SQLITE_COLUMNS
from vocwatch.edges.ledgers import LeaseLostError, LedgerUnavailableError, PgLedgerError

__all__ = ["LeaseLostError", "LedgerUnavailableError", "PgLedger", "redact"]

T = TypeVar("T")

SCHEMA_VERSION = 2
# Each entry brings the schema from version i to i + 1; run under an advisory lock, in one transaction.
# Version 2: what the recording holds and what its structure said, as the SQLite ledger's version 3.
_MIGRATIONS = [
    """
    CREATE TABLE recordings (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        recording_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        file TEXT NOT NULL,
        size BIGINT NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        job_status TEXT,
        job_finished_at DOUBLE PRECISION,
        job_error TEXT,
        next_poll_at DOUBLE PRECISION,
        poll_interval DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        duplicate_of TEXT,
        destination TEXT,
        unknown_since DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        holder TEXT,
        host TEXT,
        op_id TEXT UNIQUE,
        origin TEXT UNIQUE
    );
    CREATE INDEX recordings_key ON recordings (recording_id, sha256);
    CREATE INDEX recordings_state ON recordings (state);
    CREATE INDEX recordings_job ON recordings (job_id);
    CREATE INDEX recordings_file ON recordings (file);
    CREATE INDEX recordings_host ON recordings (host);
    CREATE INDEX recordings_holder ON recordings (holder) WHERE holder IS NOT NULL;
    CREATE UNIQUE INDEX recordings_open ON recordings (recording_id, sha256) WHERE state IN ('claimed', 'uploading');
    CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        row_id BIGINT NOT NULL REFERENCES recordings (id),
        at DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_row ON events (row_id);
    CREATE TABLE leases (
        holder TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        renewed_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        taken_by TEXT,
        taken_at TIMESTAMPTZ
    );
    """,
    """
    ALTER TABLE recordings ADD COLUMN duration_seconds DOUBLE PRECISION;
    ALTER TABLE recordings ADD COLUMN codec TEXT;
    ALTER TABLE recordings ADD COLUMN sample_rate INTEGER;
    ALTER TABLE recordings ADD COLUMN channels INTEGER;
    ALTER TABLE recordings ADD COLUMN structure TEXT;
    """,
]

COLUMNS = list(SQLITE_COLUMNS)  # host included: the instance that took (here: last held) the row
_COLS = ", ".join(COLUMNS)
# A job is followed until one of these; any other status (documented or not) is asked about again.
_FINAL_JOBS = "(" + ", ".join(f"'{j}'" for j in sorted(FINAL_JOB)) + ")"
# Connection settings added unless the URL (or PG* environment) names them: a partition must not hang a
# call for the kernel's TCP timeout (hours), and the server should say who is connected.
_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}
_ENV = {"connect_timeout": "PGCONNECT_TIMEOUT"}
# SQLSTATE classes that no wait cures: bad credentials (28), no such database (3D), no permission (42).
_FATAL = ("28", "3D", "42")
_RECONNECT_MAX_S = 2.0

_LIVE = "taken_by IS NULL AND expires_at > now()"


def redact(url: str) -> str:
    """The URL without a password, for logs and errors."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable ledger.url>"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if k in ("host", "port", "dbname", "user")})


def conninfo(url: str, password: str | None, holder: str | None) -> str:
    params = conninfo_to_dict(url)
    extra: dict[str, Any] = {}
    for key, value in _DEFAULTS.items():
        if key not in params and not os.environ.get(_ENV.get(key, "PG" + key.upper())):
            extra[key] = value
    if password is not None and "password" not in params:
        extra["password"] = password
    if "application_name" not in params:
        extra["application_name"] = f"vocwatch {holder or 'cli'}"[:63]
    return make_conninfo(url, **extra)


class PgLedger:
    """Thread-safe: one connection under a lock (a ledger call is a few statements on a local network)."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        holder: str | None = None,
        schema: str = "vocwatch",
        lease_seconds: float = 60.0,
        password: str | None = None,
        readonly: bool = False,
        wait: bool = False,
        log: Any = None,
    ) -> None:
        self.url = url
        self.path = redact(url)  # what effects and messages name
        self.holder = holder
        self.schema = schema
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._conninfo = conninfo(url, password, holder)
        self._readonly = readonly
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._stopping = threading.Event()
        self._wait = wait
        self._log = log or structlog.get_logger("vocwatch.edges.ledger_pg")
        self.problem: str | None = None  # why the database cannot be reached, while it cannot
        self.connected_since: float | None = None  # monotonic; None while unreachable
        self.on_change: Callable[[str | None], None] = lambda problem: None
        self._run(lambda conn, retry: None)  # connect (and migrate) now: a bad URL fails at start

    # -- connection, retries, schema -------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop()
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            if not self._readonly:
                self._migrate(conn)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            # A daemon paused or cut off inside a transaction must not hold its row locks for the server's
            # TCP timeout (hours): the server ends such a session, and a lock wait here ends too (and is retried).
            idle = int(1000 * min(max(self.lease_seconds / 3, 1.0), 10.0))
            conn.execute(sql.SQL("SET idle_in_transaction_session_timeout = {}").format(sql.Literal(idle)))
            conn.execute("SET lock_timeout = 5000")
            conn.execute("SET statement_timeout = 30000")
            if self._readonly:
                conn.execute("SET default_transaction_read_only = on")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _migrate(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        schema = sql.Identifier(self.schema)
        with conn.transaction():
            # Daemons starting together: one migrates, the others wait here and find it done.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('vocwatch.schema'), hashtext(%s))", (self.schema,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_version (version INTEGER NOT NULL)").format(schema)
            )
            found = conn.execute(sql.SQL("SELECT version FROM {}.schema_version").format(schema)).fetchone()
            version = 0 if found is None else int(found[0])
            if version > SCHEMA_VERSION:
                raise PgLedgerError(
                    f"ledger {self.path} schema {self.schema}: version {version} is newer than this vocwatch "
                    f"({SCHEMA_VERSION}); upgrade vocwatch on this host"
                )
            if version == SCHEMA_VERSION:
                return
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
            for step in _MIGRATIONS[version:]:
                conn.execute(step)
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def interrupt(self) -> None:
        """Stop waiting for an unreachable database: blocked calls raise LedgerUnavailableError (shutdown)."""
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            self._drop()

    def _run(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]], bool], T]) -> T:
        """``fn`` in one transaction, again until the database answers. ``retry`` tells ``fn`` that an
        earlier try may have committed (the connection broke at COMMIT): it must check its op_id first."""
        delay = 0.1
        retry = False
        while True:
            with self._lock:
                try:
                    conn = self._connection()
                    with conn.transaction():
                        result = fn(conn, retry)
                    self._reachable()
                    return result
                except psycopg.OperationalError as exc:
                    if (exc.sqlstate and exc.sqlstate[:2] in _FATAL) or not (self._wait or self.connected_since):
                        self._drop()
                        raise PgLedgerError(f"ledger {self.path}: {_first_line(exc)}") from exc
                    self._unreachable(exc)
                except psycopg.InterfaceError as exc:
                    self._unreachable(exc)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise PgLedgerError(f"ledger {self.path}: {_first_line(exc)}") from exc
            retry = True
            if self._stopping.wait(delay):
                raise LedgerUnavailableError(f"ledger {self.path} unreachable: {self.problem}")
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _unreachable(self, exc: Exception) -> None:
        self._drop()
        problem = _first_line(exc)
        if self.problem is None:
            self.problem = problem or type(exc).__name__
            self.connected_since = None
            self._log.warning(
                "ledger.unreachable",
                ledger=self.path,
                error=self.problem,
                note="claims pause and finished uploads wait for their ledger step; nothing goes to failed/ "
                "for this, and everything resumes by itself once the database answers",
            )
            self.on_change(self.problem)

    def _reachable(self) -> None:
        if self.connected_since is None:
            self.connected_since = self._clock.monotonic()
        if self.problem is not None:
            self._log.info("ledger.reachable", ledger=self.path, was=self.problem)
            self.problem = None
            self.on_change(None)

    # -- reads ---------------------------------------------------------------------------

    def _select(self, tail: str, args: tuple[Any, ...]) -> list[Row]:
        query = f"SELECT {_COLS} FROM recordings {tail}"
        return self._run(lambda conn, retry: [_row(v) for v in conn.execute(query, args).fetchall()])

    def find(self, recording_id: str, sha256: str | None = None) -> list[Row]:
        if sha256 is None:
            return self._select("WHERE recording_id = %s ORDER BY id", (recording_id,))
        return self._select("WHERE recording_id = %s AND sha256 = %s ORDER BY id", (recording_id, sha256))

    def by_file(self, file: str) -> list[Row]:
        return self._select("WHERE file = %s ORDER BY id", (file,))

    def lookup(self, ident: str) -> list[Row]:
        return self._select("WHERE recording_id = %s OR job_id = %s ORDER BY id", (ident, ident))

    def rows(
        self,
        *,
        state: str | None = None,
        since: float | None = None,
        recording_id: str | None = None,
        created_since: float | None = None,
    ) -> list[Row]:
        clauses, args = [], []
        for clause, value in (
            ("state = %s", state),
            ("updated_at >= %s", since),
            ("recording_id = %s", recording_id),
            ("created_at >= %s", created_since),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(f"{where} ORDER BY id", tuple(args))

    def iter_all(self) -> Iterator[Row]:
        yield from self._select("ORDER BY id", ())

    def events(self, row_id: int) -> list[tuple[float, str, str | None]]:
        def read(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> list[tuple[float, str, str | None]]:
            cur = conn.execute("SELECT at, event, detail FROM events WHERE row_id = %s ORDER BY id", (row_id,))
            return [(float(a), str(e), d) for a, e, d in cur.fetchall()]

        return self._run(read)

    def due_polls(self, now: float, limit: int = 100) -> list[Row]:
        return self._select(
            "WHERE job_id IS NOT NULL AND state IN ('accepted', 'uploaded', 'done') "
            f"AND (job_status IS NULL OR job_status NOT IN {_FINAL_JOBS}) AND next_poll_at <= %s "
            "ORDER BY next_poll_at LIMIT %s",
            (now, limit),
        )

    def settle_due(self, limit: int = 100) -> list[Row]:
        return self._select(
            "WHERE state = 'uploaded' AND job_status IN ('completed', 'failed', 'unknown') ORDER BY id LIMIT %s",
            (limit,),
        )

    def next_poll_at(self) -> float | None:
        def read(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> float | None:
            found = conn.execute(
                "SELECT MIN(next_poll_at) FROM recordings WHERE job_id IS NOT NULL "
                "AND state IN ('accepted', 'uploaded', 'done') "
                f"AND (job_status IS NULL OR job_status NOT IN {_FINAL_JOBS})"
            ).fetchone()
            return None if found is None or found[0] is None else float(found[0])

        return self._run(read)

    # -- writes: one transaction each; every state change a compare-and-set on state and holder

    def _by_op(self, conn: psycopg.Connection[tuple[Any, ...]], op: str) -> Row | None:
        found = conn.execute(f"SELECT {_COLS} FROM recordings WHERE op_id = %s", (op,)).fetchone()
        return None if found is None else _row(found)

    def _get(self, conn: psycopg.Connection[tuple[Any, ...]], row_id: int) -> Row:
        found = conn.execute(f"SELECT {_COLS} FROM recordings WHERE id = %s", (row_id,)).fetchone()
        assert found is not None, row_id
        return _row(found)

    def _lease_held(self, conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
        return (
            conn.execute(f"SELECT 1 FROM leases WHERE holder = %s AND {_LIVE}", (self.holder,)).fetchone() is not None
        )

    def claim(
        self,
        recording_id: str,
        sha256: str,
        file: str,
        size: int,
        take: Row | None = None,
        audio: Mapping[str, Any] | None = None,
    ) -> Row | None:
        """As the SQLite ledger's; also refused (LeaseLostError) while this daemon holds no live lease."""
        now = self._clock.time()
        extra = {k: v for k, v in (audio or {}).items() if k in AUDIO_COLUMNS}
        names = "".join(f", {k}" for k in extra)
        marks = ", %s" * len(extra)
        sets = "".join(f"{k} = %s, " for k in extra)
        op = uuid.uuid4().hex
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> Row | None:
            if retry and (done := self._by_op(conn, op)) is not None:
                return done
            if not self._lease_held(conn):
                raise LeaseLostError(f"{self.holder}: no live lease; claims pause until it is renewed")
            if take is None:
                found = conn.execute(
                    "INSERT INTO recordings (recording_id, sha256, file, size, state, holder, host, op_id, created_at, "
                    f"updated_at{names}) VALUES (%s, %s, %s, %s, 'claimed', %s, %s, %s, %s, %s{marks}) "
                    "ON CONFLICT DO NOTHING RETURNING id",
                    (recording_id, sha256, file, size, self.holder, self.holder, op, now, now, *extra.values()),
                ).fetchone()
                if found is None:  # another daemon opened a row for this content meanwhile
                    return None
                row_id = int(found[0])
            else:
                assert allowed(take.state, State.CLAIMED), take.state
                try:
                    with conn.transaction():
                        cur = conn.execute(
                            "UPDATE recordings SET state = 'claimed', file = %s, sha256 = %s, size = %s, holder = %s, "
                            f"host = %s, destination = NULL, duplicate_of = NULL, {sets}op_id = %s, updated_at = %s "
                            "WHERE id = %s AND state = %s AND holder IS NOT DISTINCT FROM %s",
                            (
                                file,
                                sha256,
                                size,
                                self.holder,
                                self.holder,
                                *extra.values(),
                                op,
                                now,
                                take.id,
                                take.state,
                                take.holder,
                            ),
                        )
                except psycopg.errors.UniqueViolation:
                    return None
                if cur.rowcount != 1:
                    return None
                row_id = take.id
            _event(conn, row_id, now, "claimed", file)
            return self._get(conn, row_id)

        return self._run(write)

    def record_terminal(self, recording_id: str, sha256: str, file: str, size: int, state: State, **fields: Any) -> Row:
        assert allowed(None, state) and state in FINAL, state
        _check(fields)
        now = self._clock.time()
        op = uuid.uuid4().hex
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> Row:
            if retry and (done := self._by_op(conn, op)) is not None:
                return done
            names = ["recording_id", "sha256", "file", "size", "state", "host", "op_id", "created_at", "updated_at"]
            values = [recording_id, sha256, file, size, str(state), self.holder, op, now, now]
            names += list(fields)
            values += list(fields.values())
            found = conn.execute(
                f"INSERT INTO recordings ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) RETURNING id",
                values,
            ).fetchone()
            assert found is not None
            row_id = int(found[0])
            _event(conn, row_id, now, state, fields.get("last_error") or fields.get("duplicate_of"))
            return self._get(conn, row_id)

        return self._run(write)

    def transition(self, row: Row, state: State, event: str | None = None, **fields: Any) -> Row:
        """Compare-and-set on the state and the holder the row was read with; StaleRowError otherwise.
        The intent to send (``uploading``) also needs this daemon's live lease (LeaseLostError)."""
        assert allowed(row.state, state), f"{row.state} -> {state}"
        _check(fields)
        now = self._clock.time()
        if state in FINAL or state == State.RELEASED:
            fields = {**fields, "holder": None}
        elif state in OPEN:
            fields = {**fields, "holder": self.holder, "host": self.holder}
        fields = {**fields, "state": str(state)}
        op = uuid.uuid4().hex
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> Row:
            if retry and (done := self._by_op(conn, op)) is not None:
                return done
            if state == State.UPLOADING and not self._lease_held(conn):
                raise LeaseLostError(f"{self.holder}: lease lost before sending {row.recording_id}; letting it go")
            assignments = "".join(f"{name} = %s, " for name in fields)
            bump = "attempts = attempts + 1, " if state == State.UPLOADING else ""
            cur = conn.execute(
                f"UPDATE recordings SET {assignments}{bump}op_id = %s, updated_at = %s "
                "WHERE id = %s AND state = %s AND holder IS NOT DISTINCT FROM %s",
                (*fields.values(), op, now, row.id, row.state, row.holder),
            )
            if cur.rowcount != 1:
                raise StaleRowError(
                    f"ledger row {row.id} ({row.recording_id}) is no longer {row.state} held by {row.holder}"
                )
            detail = fields.get("last_error") or fields.get("job_id") or fields.get("destination")
            _event(conn, row.id, now, event or state, None if detail is None else str(detail))
            return self._get(conn, row.id)

        return self._run(write)

    def note(self, row: Row, event: str, detail: str | None = None, **fields: Any) -> Row:
        """Set ``fields`` on ``row`` in the state and holder it was read with (a failure's or a duplicate's
        destination, before its files move); StaleRowError if it changed (a peer took it over)."""
        _check(fields)
        now = self._clock.time()
        op = uuid.uuid4().hex
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> Row:
            if retry and (done := self._by_op(conn, op)) is not None:
                return done
            assignments = "".join(f"{name} = %s, " for name in fields)
            cur = conn.execute(
                f"UPDATE recordings SET {assignments}op_id = %s, updated_at = %s "
                "WHERE id = %s AND state = %s AND holder IS NOT DISTINCT FROM %s",
                (*fields.values(), op, now, row.id, row.state, row.holder),
            )
            if cur.rowcount != 1:
                raise StaleRowError(
                    f"ledger row {row.id} ({row.recording_id}) is no longer {row.state} held by {row.holder}"
                )
            said = detail or fields.get("destination") or fields.get("last_error")
            _event(conn, row.id, now, event, None if said is None else str(said))
            return self._get(conn, row.id)

        return self._run(write)

    def begin_attempt(self, row: Row) -> Row:
        return self.transition(row, State.UPLOADING)

    def prune(self, before: float, *, batch: int = PRUNE_BATCH, stop: Any = None) -> int:
        """As the SQLite ledger's: done and duplicate rows (with their events) last changed before ``before``,
        in short batches; failed rows are kept. The server's autovacuum reuses the space."""
        deleted = 0
        marks = ", ".join("%s" for _ in PRUNABLE)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> int:
            ids = [
                int(i)
                for (i,) in conn.execute(
                    f"SELECT id FROM recordings WHERE updated_at < %s AND state IN ({marks}) ORDER BY id LIMIT %s "
                    "FOR UPDATE SKIP LOCKED",
                    (before, *PRUNABLE, batch),
                ).fetchall()
            ]
            if ids:
                conn.execute("DELETE FROM events WHERE row_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM recordings WHERE id = ANY(%s)", (ids,))
            return len(ids)

        while stop is None or not stop.is_set():
            count = self._run(write)  # a retry after a lost COMMIT finds the rows gone: nothing twice
            deleted += count
            if count < batch:
                break
        return deleted

    @property
    def incremental(self) -> bool:
        """Pruned space is the server's to reuse (autovacuum): nothing to say about it, as for SQLite's
        incremental vacuum."""
        return True

    def update_job(self, row_id: int, **fields: Any) -> None:
        _check(fields)
        now = self._clock.time()
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> None:
            assignments = "".join(f"{name} = %s, " for name in fields)
            conn.execute(
                f"UPDATE recordings SET {assignments}updated_at = %s WHERE id = %s",
                (*fields.values(), now, row_id),
            )
            if "job_status" in fields:
                _event(conn, row_id, now, f"job.{fields['job_status']}", fields.get("job_error"))

        self._run(write)

    # -- leases: liveness across hosts, in the database's clock ---------------------------------

    def _interval(self) -> str:
        return f"{float(self.lease_seconds)} seconds"

    def acquire_lease(self) -> bool:
        """Hold (or renew) this daemon's lease; False while a peer is taking over an earlier one of ours."""

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> bool:
            found = conn.execute(
                "INSERT INTO leases (holder, host, pid, started_at, renewed_at, expires_at) "
                "VALUES (%s, %s, %s, now(), now(), now() + %s::interval) "
                "ON CONFLICT (holder) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "started_at = EXCLUDED.started_at, renewed_at = now(), expires_at = EXCLUDED.expires_at "
                "WHERE leases.taken_by IS NULL RETURNING holder",
                (self.holder, socket.gethostname(), os.getpid(), self._interval()),
            ).fetchone()
            return found is not None

        return self._run(write)

    def renew_lease(self) -> bool:
        """Extend this daemon's lease; False if it was taken over (a peer has, or is taking, its claims)."""

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> bool:
            cur = conn.execute(
                "UPDATE leases SET renewed_at = now(), expires_at = now() + %s::interval "
                "WHERE holder = %s AND taken_by IS NULL",
                (self._interval(), self.holder),
            )
            return cur.rowcount == 1

        return self._run(write)

    def lease_alive(self, holder: str) -> bool:
        """Does a live daemon hold ``holder``'s lease? The fleet's answer to Folders.holder_alive."""
        if holder == self.holder:
            return True

        def read(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> bool:
            return conn.execute(f"SELECT 1 FROM leases WHERE holder = %s AND {_LIVE}", (holder,)).fetchone() is not None

        return self._run(read)

    def expired_leases(self) -> list[str]:
        """Holders gone longer than their lease (or whose taker died mid-way): candidates for a takeover."""

        def read(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> list[str]:
            cur = conn.execute(
                "SELECT holder FROM leases WHERE holder <> %s AND expires_at < now() "
                "AND (taken_by IS NULL OR taken_at < now() - %s::interval) ORDER BY holder",
                (self.holder, self._interval()),
            )
            return [str(h) for (h,) in cur.fetchall()]

        return self._run(read)

    def begin_takeover(self, victim: str) -> int | None:
        """Take ``victim``'s expired lease and its rows (None if another daemon got there first, or this one
        holds no live lease itself); returns how many rows changed holder."""
        now = self._clock.time()
        point(Effect.COMMIT, self.path)

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> int | None:
            if retry:
                found = conn.execute("SELECT taken_by FROM leases WHERE holder = %s", (victim,)).fetchone()
                if found is not None and found[0] == self.holder:
                    return 0
            if not self._lease_held(conn):
                return None
            cur = conn.execute(
                "UPDATE leases SET taken_by = %s, taken_at = now() WHERE holder = %s AND expires_at < now() "
                "AND (taken_by IS NULL OR taken_at < now() - %s::interval)",
                (self.holder, victim, self._interval()),
            )
            if cur.rowcount != 1:
                return None
            ids = conn.execute(
                "UPDATE recordings SET holder = %s, host = %s, op_id = NULL, updated_at = %s "
                "WHERE holder = %s AND state IN ('claimed', 'uploading', 'accepted', 'uploaded') RETURNING id",
                (self.holder, self.holder, now, victim),
            ).fetchall()
            for (row_id,) in ids:
                _event(conn, int(row_id), now, "taken_over", f"from {victim}")
            return len(ids)

        return self._run(write)

    def end_takeover(self, victim: str) -> None:
        """Every pair of ``victim`` is in this daemon's work/: its lease is gone, its name free again."""

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> None:
            conn.execute("DELETE FROM leases WHERE holder = %s AND taken_by = %s", (victim, self.holder))

        self._run(write)

    # -- ledger migrate ---------------------------------------------------------------------

    def import_rows(self, rows: list[tuple[Row, list[tuple[float, str, str | None]]]], origin: str, host: str) -> int:
        """Copy rows (with their history) from another ledger; each once, by ``origin:id``. Open rows arrive
        released (their holder's lease is not this ledger's to know). Returns how many were new."""

        def write(conn: psycopg.Connection[tuple[Any, ...]], retry: bool) -> int:
            added = 0
            for row, history in rows:
                fields = {name: getattr(row, name) for name in SQLITE_COLUMNS if name != "id"}
                fields["state"] = str(State.RELEASED if row.state in OPEN else row.state)
                fields["holder"] = None if row.state in OPEN or row.state in FINAL else host
                fields["host"] = row.host or row.holder or host
                fields["origin"] = f"{origin}:{row.id}"
                names = list(fields)
                found = conn.execute(
                    f"INSERT INTO recordings ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
                    "ON CONFLICT DO NOTHING RETURNING id",
                    list(fields.values()),
                ).fetchone()
                if found is None:
                    continue
                added += 1
                for at, event, detail in history:
                    _event(conn, int(found[0]), at, event, detail)
            return added

        return self._run(write)


def _check(fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(COLUMNS)
    assert not unknown, unknown


def _event(conn: psycopg.Connection[tuple[Any, ...]], row_id: int, at: float, event: str, detail: str | None) -> None:
    conn.execute("INSERT INTO events (row_id, at, event, detail) VALUES (%s, %s, %s, %s)", (row_id, at, event, detail))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _row(values: tuple[Any, ...]) -> Row:
    fields = dict(zip(COLUMNS, values, strict=True))
    fields["state"] = State(fields["state"])
    return Row(**fields)


def read_password(password_file: Path | None) -> str | None:
    """The fleet ledger's password: systemd's credential ``ledger-password``, else ``ledger.password_file``;
    None leaves it to libpq (PGPASSWORD, PGPASSFILE, ~/.pgpass, or no password at all)."""
    candidates: list[Path] = []
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "ledger-password")
    if password_file is not None:
        candidates.append(password_file)
    for candidate in candidates:
        try:
            value = candidate.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if value:
            return value
    return None
