"""``vocwatch ledger export | list | show | migrate``: "did recording X arrive, from which host, and did its
job complete?", for one host's SQLite ledger or the whole fleet's PostgreSQL one."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, Any

from vocwatch.cli.common import EX_NOINPUT, settings_from
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.ledger import Ledger, Row
from vocwatch.edges.ledgers import LedgerStore, describe, open_ledger

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '7d', '1w' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"--since {text!r}: give a number with s, m, h, d or w (e.g. 15m, 2h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def with_host(rows: list[Row] | Any, host: str | None, fallback: str | None) -> list[Row]:
    """Each row with its ``host``: the fleet ledger records it; a SQLite ledger is one host's (``fallback``,
    its instance, unless the row names a holder). Only ``host``'s rows if given."""
    out = []
    for row in rows:
        if row.host is None and fallback is not None:
            row = replace(row, host=row.holder or fallback)
        if host is None or row.host == host or row.holder == host:
            out.append(row)
    return out


def dispatch(args: argparse.Namespace, book: LedgerStore, out: IO[str], fallback_host: str | None = None) -> int:
    host = getattr(args, "host", None)
    if args.ledger_command == "export":
        write(out, [row.export() for row in with_host(book.iter_all(), host, fallback_host)], args.format)
        return 0
    if args.ledger_command == "list":
        try:
            since = time.time() - parse_duration(args.since) if args.since else None
        except ValueError as exc:
            print(f"vocwatch: {exc}", file=out)
            return 64
        rows = with_host(book.rows(state=args.state, since=since, recording_id=args.recording), host, fallback_host)
        if args.json or not out.isatty():
            write(out, [row.export() for row in rows], "jsonl")
        else:
            table(out, rows)
        return 0
    rows = with_host(book.lookup(args.ident), host, fallback_host)
    if not rows:
        print(f"no recording or job {args.ident!r} in the ledger", file=out)
        return 1
    for row in rows:
        show(out, book, row)
    return 0


def write(out: IO[str], rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "csv":
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(out: IO[str], rows: list[Row]) -> None:
    head = ("RECORDING", "HOST", "STATE", "JOB", "JOB STATUS", "ATTEMPTS", "UPDATED (UTC)", "FILE")
    cells = [
        (
            r.recording_id,
            r.host or "-",
            r.state,
            r.job_id or r.duplicate_of or "-",
            r.job_status or "-",
            str(r.attempts),
            _when(r.updated_at),
            r.file,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    for line in (head, *cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def show(out: IO[str], book: LedgerStore, row: Row) -> None:
    for key, value in row.export().items():
        if key.endswith("_at") and isinstance(value, float):
            value = _when(value)
        out.write(f"{key:>16}: {'-' if value is None else value}\n")
    out.write(f"{'history':>16}:\n")
    for at, event, detail in book.events(row.id):
        out.write(f"{'':>18}{_when(at)}  {event}{'  ' + detail if detail else ''}\n")
    out.write("\n")


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path = settings.ledger.path
    if args.ledger_command == "migrate":
        return migrate(settings, args.to, sys.stdout)
    if settings.ledger.url is None and not path.exists():
        print(
            f"vocwatch: no ledger at {path} (ledger.path); nothing has been uploaded with this config yet",
            file=sys.stderr,
        )
        return EX_NOINPUT
    book = open_ledger(settings.ledger, SystemClock())
    try:
        return dispatch(args, book, sys.stdout, None if settings.ledger.url else settings.instance)
    finally:
        book.close()


def migrate(settings: Settings, url: str, out: IO[str]) -> int:
    """Copy this host's SQLite ledger (ledger.path) into the fleet ledger at ``url``, every row once: a row
    already copied (by its origin, this instance and its row id) is skipped, so running it twice is safe."""
    path = settings.ledger.path
    if not path.exists():
        print(f"vocwatch: no ledger at {path} (ledger.path): nothing to migrate", file=sys.stderr)
        return EX_NOINPUT
    from vocwatch.edges.ledger_pg import PgLedger

    target_settings = settings.ledger.model_copy(update={"url": url})
    source = Ledger(path, SystemClock(), readonly=True)
    target = open_ledger(target_settings, SystemClock())
    assert isinstance(target, PgLedger)
    try:
        host = settings.instance
        rows = [(row, source.events(row.id)) for row in source.iter_all()]
        added = 0
        for start in range(0, len(rows), 500):
            added += target.import_rows(rows[start : start + 500], origin=f"sqlite:{host}", host=host)
    finally:
        source.close()
        target.close()
    print(
        f"migrated {path} into {describe(target_settings)}: {added} rows added, {len(rows) - added} already there "
        f"(host {host})",
        file=out,
    )
    return 0
