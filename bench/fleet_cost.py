"""The ledger's cost per file: the same journey (find, claim, intent, job id, done) on SQLite and PostgreSQL.

``python -m bench.fleet_cost``; also a row of ``make bench`` when PostgreSQL's server binaries are installed
(``apt-get install postgresql``). Both backends as shipped: SQLite WAL with synchronous=FULL on the job id,
PostgreSQL on a throwaway loopback cluster with fsync and synchronous_commit on (the fleet's durability).
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vocwatch.core.states import State
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.ledger import Ledger
from vocwatch.edges.ledger_pg import PgLedger

FILES = 300
ROUNDS = 3
# The test harness's throwaway cluster (tests/support/pg.py), made durable again for a fair comparison.
DURABLE = "\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"


def journey(book: Any, n: int, tag: str) -> float:
    """Seconds for ``n`` recordings' ledger steps, as a worker makes them for an accepted upload."""
    started = time.perf_counter()
    for i in range(n):
        rid = f"{tag}-{i}"
        sha = hashlib.sha256(rid.encode()).hexdigest()
        book.find(rid)
        row = book.claim(rid, sha, f"{rid}.wav", 200_000)
        row = book.begin_attempt(row)
        row = book.transition(row, State.ACCEPTED, job_id=f"job-{rid}", destination=f"/spool/done/{rid}.wav")
        book.transition(row, State.DONE, destination=f"/spool/done/{rid}.wav")
    return time.perf_counter() - started


def _median_ms(book: Any, name: str) -> float:
    return statistics.median(journey(book, FILES, f"{name}{r}") for r in range(ROUNDS)) / FILES * 1000


def measure() -> dict[str, float] | None:
    """ms per file on each backend, or None when no PostgreSQL server can be started here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.pg import Cluster, _bindir  # the test harness's cluster, loopback only

    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="vocwatch-ledger-cost-") as tmp:
        sqlite = Ledger(Path(tmp) / "ledger.sqlite3", SystemClock(), holder="bench")
        try:
            sqlite_ms = _median_ms(sqlite, "s")
        finally:
            sqlite.close()
    cluster = Cluster(bindir)
    try:
        cluster.init()
        with open(cluster.data / "postgresql.conf", "a") as fh:
            fh.write(DURABLE)
        cluster.start()
        pg = PgLedger(cluster.create_database(), SystemClock(), holder="bench")
        try:
            assert pg.acquire_lease()
            pg_ms = _median_ms(pg, "p")
        finally:
            pg.close()
    finally:
        cluster.destroy()
    return {"sqlite_ms_per_file": sqlite_ms, "postgresql_ms_per_file": pg_ms, "files": FILES}


def line(result: dict[str, float] | None) -> str:
    if result is None:
        return "ledger cost per file: PostgreSQL not installed (apt-get install postgresql), fleet row skipped"
    s, p = result["sqlite_ms_per_file"], result["postgresql_ms_per_file"]
    return (
        f"ledger cost per file (find, claim, intent, job id, done; median of {ROUNDS} x {FILES}): "
        f"SQLite {s:.2f} ms, PostgreSQL {p:.2f} ms ({p / s:.1f}x)"
    )


if __name__ == "__main__":
    print(line(measure()))
