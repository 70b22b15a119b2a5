"""The ledger at scale: with N rows (10 million in the full run), ``ledger list --since 1h`` and ``ledger
show ID`` must answer in under 100 ms. Measured in-process (the query, not Python's start-up), median of 5.

    .venv/bin/python -m bench.ledger_bench --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from vocwatch.edges.clock import SystemClock
from vocwatch.edges.ledger import Ledger

TARGET_MS = 100.0
RECENT = 500  # rows changed in the last hour


def build(path: Path, rows: int) -> float:
    """A ledger of ``rows`` rows (all but RECENT older than a day) with one event each; seconds taken."""
    import sqlite3

    started = time.monotonic()
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    Ledger(path, SystemClock()).close()
    now = time.time()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous = OFF")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO recordings (recording_id, sha256, file, size, state, job_id, destination, created_at, "
            "updated_at) SELECT 'rec-' || i, printf('%064x', i), 'calls/' || i || '.wav', 2000000, "
            "CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'done' END, 'job-' || i, '/spool/done/calls/' || i || '.wav', "
            "?, CASE WHEN i > ? THEN ? ELSE ? - 86400 * 30 + i * 0.1 END FROM n",
            (rows, now - 86400 * 30, rows - RECENT, now - 60, now - 86400 * 30),
        )
        db.execute(
            "INSERT INTO events (row_id, at, event, detail) SELECT id, updated_at, state, job_id FROM recordings"
        )
    return time.monotonic() - started


def _median_ms(run: Any) -> float:
    times = []
    for _ in range(5):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 2)


def measure(path: Path, rows: int) -> dict[str, Any]:
    book = Ledger(path, SystemClock(), readonly=True)
    try:
        since = time.time() - 3600
        listed = book.rows(since=since)
        ident = f"rec-{rows // 2}"

        def show() -> None:
            for row in book.lookup(ident):
                book.events(row.id)

        result = {
            "rows": rows,
            "list_since_1h_rows": len(listed),
            "list_since_1h_ms": _median_ms(lambda: book.rows(since=since)),
            "show_ms": _median_ms(show),
            "target_ms": TARGET_MS,
        }
    finally:
        book.close()
    result["ok"] = result["list_since_1h_ms"] < TARGET_MS and result["show_ms"] < TARGET_MS
    return result


def run(work: Path, rows: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "ledger-bench.sqlite3"
    built = build(path, rows)
    result = measure(path, rows)
    result["build_s"] = round(built, 1)
    result["file_mb"] = round(sum(p.stat().st_size for p in work.glob("ledger-bench.sqlite3*")) / 1e6, 1)
    for stale in work.glob("ledger-bench.sqlite3*"):
        stale.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_bench")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    args = parser.parse_args(argv)
    result = run(args.work, args.rows)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
