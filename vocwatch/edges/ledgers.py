"""What every ledger backend offers (SQLite, edges.ledger; PostgreSQL, edges.ledger_pg), and which one to open.

The runtime and the command line speak only to this Protocol; build() in runtime/daemon.py chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from vocwatch.core.model import Clock
from vocwatch.core.states import Row, State
from vocwatch.edges.config import LedgerSettings
from vocwatch.edges.ledger import Ledger, StaleRowError


# The fleet ledger's errors live here, not in ledger_pg: a daemon on SQLite never imports psycopg (~100 ms).
class LedgerUnavailableError(RuntimeError):
    """The fleet ledger could not be reached and the caller stopped waiting (shutdown)."""


class LeaseLostError(StaleRowError):
    """This daemon's lease expired or was taken over: it may not claim or send until it holds one again."""


class PgLedgerError(Exception):
    """The fleet ledger refuses us for a reason no wait cures (credentials, database, permissions)."""


class LedgerStore(Protocol):
    """One ledger: rows per recording and content, every state change a compare-and-set."""

    holder: str | None

    def close(self) -> None: ...

    def find(self, recording_id: str, sha256: str | None = None) -> list[Row]: ...

    def by_file(self, file: str) -> list[Row]: ...

    def lookup(self, ident: str) -> list[Row]: ...

    def rows(
        self,
        *,
        state: str | None = None,
        since: float | None = None,
        recording_id: str | None = None,
        created_since: float | None = None,
    ) -> list[Row]: ...

    def iter_all(self) -> Iterator[Row]: ...

    def events(self, row_id: int) -> list[tuple[float, str, str | None]]: ...

    def due_polls(self, now: float, limit: int = 100) -> list[Row]: ...

    def settle_due(self, limit: int = 100) -> list[Row]: ...

    def next_poll_at(self) -> float | None: ...

    def claim(
        self,
        recording_id: str,
        sha256: str,
        file: str,
        size: int,
        take: Row | None = None,
        audio: Mapping[str, Any] | None = None,
    ) -> Row | None: ...

    def record_terminal(
        self, recording_id: str, sha256: str, file: str, size: int, state: State, **fields: Any
    ) -> Row: ...

    def transition(self, row: Row, state: State, event: str | None = None, **fields: Any) -> Row: ...

    def note(self, row: Row, event: str, detail: str | None = None, **fields: Any) -> Row: ...

    def begin_attempt(self, row: Row) -> Row: ...

    def update_job(self, row_id: int, **fields: Any) -> None: ...

    def prune(self, before: float, *, batch: int = ..., stop: Any = None) -> int: ...

    @property
    def incremental(self) -> bool: ...

    @property
    def path(self) -> object: ...


HolderAlive = Callable[[str], bool]


def open_ledger(
    settings: LedgerSettings,
    clock: Clock,
    *,
    holder: str | None = None,
    readonly: bool = False,
    wait: bool = False,
    log: Any = None,
) -> LedgerStore:
    """The configured ledger: the fleet's PostgreSQL one if ``ledger.url`` is set, else the SQLite file.
    ``wait``: a daemon waits for an unreachable database; a command fails at once."""
    if settings.url is None:
        return Ledger(settings.path, clock, readonly=readonly, holder=holder)
    from vocwatch.edges.ledger_pg import PgLedger, read_password

    return PgLedger(
        settings.url,
        clock,
        holder=holder,
        schema=settings.pg_schema,
        lease_seconds=settings.lease_seconds,
        password=read_password(settings.password_file),
        readonly=readonly,
        wait=wait,
        log=log,
    )


def describe(settings: LedgerSettings) -> str:
    """The ledger's name for messages: the file, or the URL without its password."""
    if settings.url is None:
        return str(settings.path)
    from vocwatch.edges.ledger_pg import redact

    return f"{redact(settings.url)} (schema {settings.pg_schema})"


__all__ = ["HolderAlive", "LedgerStore", "describe", "open_ledger"]
