"""``vocwatch ledger export | list | show``: answers to "did recording X arrive, and did its job complete?"."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from vocwatch.cli.common import EX_NOINPUT, EX_USAGE, settings_from
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.ledger import Ledger, Row

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '7d', '1w' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"--since {text!r}: give a number with s, m, h, d or w (e.g. 15m, 2h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def dispatch(args: argparse.Namespace, book: Ledger, out: IO[str]) -> int:
    if args.ledger_command == "export":
        write(out, [row.export() for row in book.iter_all()], args.format)
        return 0
    if args.ledger_command == "list":
        try:
            since = time.time() - parse_duration(args.since) if args.since else None
        except ValueError as exc:
            print(f"vocwatch: {exc}", file=out)
            return EX_USAGE
        rows = book.rows(state=args.state, since=since, recording_id=args.recording)
        if args.json or not out.isatty():
            write(out, [row.export() for row in rows], "jsonl")
        else:
            table(out, rows)
        return 0
    rows = book.lookup(args.ident)
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
    head = ("RECORDING", "STATE", "JOB", "JOB STATUS", "ATTEMPTS", "UPDATED (UTC)", "FILE")
    cells = [
        (
            r.recording_id,
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


def show(out: IO[str], book: Ledger, row: Row) -> None:
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
    if not path.exists():
        print(
            f"vocwatch: no ledger at {path} (ledger.path); nothing has been uploaded with this config yet",
            file=sys.stderr,
        )
        return EX_NOINPUT
    book = Ledger(path, SystemClock())
    try:
        return dispatch(args, book, sys.stdout)
    finally:
        book.close()
