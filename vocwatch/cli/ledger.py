"""``vocwatch ledger export | list | show | report | migrate``: "did recording X arrive, from which host, did
its job complete, how many minutes?", for one host's SQLite ledger or the whole fleet's PostgreSQL one."""

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

from vocwatch.cli.common import EX_NOINPUT, EX_USAGE, settings_from
from vocwatch.core.content import Scheme, scheme
from vocwatch.core.states import State
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
            return EX_USAGE
        rows = with_host(book.rows(state=args.state, since=since, recording_id=args.recording), host, fallback_host)
        if args.json or not out.isatty():
            write(out, [row.export() for row in rows], "jsonl")
        else:
            table(out, rows)
        return 0
    if args.ledger_command == "report":
        return report(args, book, out, fallback_host)
    rows = with_host(book.lookup(args.ident), host, fallback_host)
    if not rows:
        print(f"no recording or job {args.ident!r} in the ledger", file=out)
        return 1
    for row in rows:
        show(out, book, row)
    return 0


DELIVERED = frozenset({State.ACCEPTED, State.UPLOADED, State.DONE})


def report(args: argparse.Namespace, book: LedgerStore, out: IO[str], fallback_host: str | None = None) -> int:
    """Recordings, minutes of audio, bytes and failures by reason, of rows created within ``--since``."""
    try:
        since = time.time() - parse_duration(args.since)
    except ValueError as exc:
        print(f"vocwatch: {exc}", file=out)
        return 64
    lines = summarize(with_host(book.rows(created_since=since), None, fallback_host), args.by)
    if args.json or not out.isatty():
        write(out, lines, "jsonl")
    else:
        report_table(out, lines, args.by or "since", since)
    return 0


def _group(row: Row, by: str | None) -> str:
    if by == "day":
        return datetime.fromtimestamp(row.created_at, UTC).strftime("%Y-%m-%d")
    if by == "host":
        return row.host or row.holder or "-"
    if by == "state":
        return str(row.state)
    return "all"


def summarize(rows: list[Row], by: str | None) -> list[dict[str, Any]]:
    """One line per group: ``recordings`` (rows), ``delivered`` (accepted, uploaded or done), their ``minutes``
    of audio and ``bytes``, ``unknown_duration`` (delivered rows without a duration: minutes is a lower bound),
    ``failed`` and ``failures`` by reason."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = _group(row, by)
        line = groups.setdefault(
            key,
            {
                by or "total": key,
                "recordings": 0,
                "delivered": 0,
                "minutes": 0.0,
                "bytes": 0,
                "unknown_duration": 0,
                "failed": 0,
                "failures": {},
            },
        )
        line["recordings"] += 1
        if row.state in DELIVERED:
            line["delivered"] += 1
            line["bytes"] += row.size
            if row.duration_seconds is None:
                line["unknown_duration"] += 1
            else:
                line["minutes"] += row.duration_seconds / 60
        elif row.state == State.FAILED:
            line["failed"] += 1
            reason = (row.last_error or "unknown").split(":", 1)[0]
            line["failures"][reason] = line["failures"].get(reason, 0) + 1
    for line in groups.values():
        line["minutes"] = round(line["minutes"], 2)
        line["failures"] = dict(sorted(line["failures"].items()))
    return [groups[k] for k in sorted(groups)]


def report_table(out: IO[str], lines: list[dict[str, Any]], by: str, since: float) -> None:
    head = (by.upper(), "RECORDINGS", "DELIVERED", "MINUTES", "BYTES", "FAILED", "FAILURES BY REASON")
    cells = [
        (
            str(line.get(by, _when(since))),
            str(line["recordings"]),
            str(line["delivered"]),
            f"{line['minutes']:.2f}" + ("+" if line["unknown_duration"] else ""),
            str(line["bytes"]),
            str(line["failed"]),
            ", ".join(f"{reason} {n}" for reason, n in line["failures"].items()),
        )
        for line in lines
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    for cols in (head, *cells):
        padded = [c.rjust(w) if 0 < i < 6 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True))]
        out.write("  ".join(padded).rstrip() + "\n")
    if any(line["unknown_duration"] for line in lines):
        out.write("(+: some delivered recordings have no known duration; minutes counts the others)\n")


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


# What a row's ``sha256`` field holds (the name is public; the value says its own format).
_DIGEST_NOTE = {
    Scheme.BLAKE3: "  (content digest: BLAKE3-256)",
    Scheme.SHA256: "  (content digest: sha256, written by an earlier version)",
    Scheme.NONE: "",
}


def show(out: IO[str], book: LedgerStore, row: Row) -> None:
    for key, value in row.export().items():
        if key.endswith("_at") and isinstance(value, float):
            value = _when(value)
        if key == "sha256":
            value = f"{value or '-'}{_DIGEST_NOTE[scheme(row.sha256)]}"
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
