"""``vocwatch check``: one line per check, ok or FAIL with a hint."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from vocwatch.cli.common import settings_from
from vocwatch.core import schedule
from vocwatch.core.model import AuthProblem, Rejected
from vocwatch.core.reasons import REASONS
from vocwatch.edges.client import CrescendoClient, build_http, classify_upload
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import ConfigError, Settings, api_key_sources, resolve_api_key
from vocwatch.edges.ledgers import LedgerUnavailableError, PgLedgerError, describe, open_ledger
from vocwatch.edges.throttle import local_day_seconds
from vocwatch.edges.watcher import choose_mode, held_open_means
from vocwatch.runtime.daemon import check_layout

Check = tuple[str, Callable[[], tuple[bool, str]]]


def _writable(path: Path) -> tuple[bool, str]:
    if not path.is_dir():
        return False, f"{path} does not exist; create it (systemd-tmpfiles --create, or install -d -o vocwatch {path})"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vocwatch-check-"):
            pass
    except OSError as exc:
        return False, f"{path} is not writable by uid {os.getuid()}: {exc.strerror}; fix its owner or mode"
    return True, str(path)


def _layout(settings: Settings) -> tuple[bool, str]:
    try:
        check_layout(settings)
    except ConfigError as exc:
        return False, " / ".join(exc.problems)
    return True, "inbox, work, done, failed and uploaded share one filesystem"


def _fleet_ledger(settings: Settings) -> tuple[bool, str]:
    """The fleet's PostgreSQL ledger: reachable with this URL and password, its schema readable."""
    try:
        store = open_ledger(settings.ledger, SystemClock(), readonly=True)
    except (PgLedgerError, LedgerUnavailableError) as exc:
        return False, f"{exc}; check ledger.url, ledger.password_file and that PostgreSQL answers from here"
    store.close()
    return True, f"{describe(settings.ledger)}: reachable"


def _ledger(settings: Settings) -> tuple[bool, str]:
    if settings.ledger.url is not None:
        return _fleet_ledger(settings)
    path = settings.ledger.path
    if not path.exists():
        ok, detail = _writable(path.parent)
        return ok, f"{path} will be created at first start" if ok else f"cannot create {path.name}: {detail}"
    try:
        # A URI, so that mode=ro applies; as_uri() escapes a '?' or '#' in the path.
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        return False, f"{path}: {exc}; restore it from a backup or move it aside"
    return result == "ok", f"{path}: integrity {result}"


def _months(settings: Settings) -> list[Check]:
    """What the running-for-months keys come to (each line is ok: a bad value never loads at all)."""
    f, up = settings.folders, settings.upload
    table = up.timetable
    window = up.upload_window
    now = local_day_seconds(time.time())

    def bandwidth() -> tuple[bool, str]:
        if not table.limited:
            return True, "no limit"
        if len(table.entries) == 1:
            return True, f"{table.show()}/s, all workers together"
        return True, f"{table.show()} (local time); now {schedule.show_rate(table.rate_at(now))}"

    def upload_window() -> tuple[bool, str]:
        if window is None:
            return True, "uploads start at any time"
        state = "open now" if window.inside(now) else f"closed now, opens {window.opens}"
        return True, f"{window.show()} local time ({state})"

    def retention() -> tuple[bool, str]:
        if f.done_retention_days <= 0:
            return True, "done/ is kept (0: no retention)"
        return True, f"pairs older than {f.done_retention_days:g} days leave {f.done}, at start and hourly"

    def keep_days() -> tuple[bool, str]:
        if settings.ledger.keep_days <= 0:
            return True, "every row is kept"
        return True, f"done/duplicate rows older than {settings.ledger.keep_days:g} days are pruned (failed kept)"

    action = {
        "move": f"accepted pairs are kept in {f.done}",
        "delete": "both files are deleted once accepted"
        + (" and completed" if f.done_after == "completed" else "")
        + "; the ledger keeps the row and its content digest",
    }[f.done_action]
    layout = f"{f.done}/{f.done_layout}/..." if f.done_layout else "flat: the inbox's own sub-folders"
    order = "oldest first (by mtime)" if up.order == "oldest" else "in order of arrival"
    mode = choose_mode(settings.watch.mode, f.inbox, recursive=settings.watch.recursive)
    return [
        ("done_action", lambda: (True, action)),
        ("done_retention", retention),
        ("done_layout", lambda: (True, layout)),
        ("upload.bandwidth", bandwidth),
        ("upload.window", upload_window),
        ("upload.order", lambda: (True, order)),
        ("ledger.keep_days", keep_days),
        ("watch.mode", lambda: (True, f"{settings.watch.mode} -> {mode.show()}")),
    ]


def client_for(settings: Settings) -> CrescendoClient:
    return _client_on(settings, _http(settings))


def _http(settings: Settings) -> httpx.Client:
    api = settings.api
    return build_http(
        workers=1,
        connect_timeout=api.connect_timeout_seconds,
        read_timeout=30,
        verify=str(api.ca_bundle) if api.ca_bundle else api.verify_tls,
        trust_env=api.trust_env,
        proxy=api.proxy,
    )


def _client_on(settings: Settings, http: httpx.Client) -> CrescendoClient:
    api = settings.api
    return CrescendoClient(
        http=http, base_url=str(api.base_url), tenant_id=api.tenant_id, key=lambda: resolve_api_key(settings)
    )


def _key(settings: Settings, client: CrescendoClient) -> tuple[bool, str]:
    if resolve_api_key(settings) is None:
        return False, f"missing: put it in one of {api_key_sources(settings)}"
    unusable = _unsendable(client)
    if unusable is not None:
        return False, unusable
    return True, f"present (looked in {api_key_sources(settings)})"


def _unsendable(client: CrescendoClient) -> str | None:
    """Why the daemon would refuse to send this key, by the client's own header guard; None if it would."""
    auth = client._auth()
    if isinstance(auth, AuthProblem):
        return f"{auth.message} (the daemon refuses to send it)"
    return None


def _key_accepted(settings: Settings, http: httpx.Client, client: CrescendoClient) -> tuple[bool, str]:
    """POST a body that is no recording to the upload URL: a 400 means key and tenant were accepted.

    A status query cannot tell a wrong tenant from an unknown job (both 404), nor a read-only key.
    """
    if resolve_api_key(settings) is None:
        return False, "no key to try"
    # The daemon's own header, and its own refusal: a key the daemon would never send is never sent here.
    auth = client._auth()
    if isinstance(auth, AuthProblem):
        return False, f"not sent: {auth.message}"
    try:
        response = http.post(client.upload_url, json={}, headers=auth)
    except httpx.HTTPError as exc:
        # Never the exception's text: an invalid header's error quotes the header, key and all.
        return False, _request_failed(exc, client.upload_url)
    outcome = classify_upload(response)
    if isinstance(outcome, AuthProblem):
        return False, f"refused: HTTP {outcome.status} {outcome.message}; fix the key, api.tenant_id or api.base_url"
    if isinstance(outcome, Rejected):
        return True, f"key accepted for tenant {settings.api.tenant_id}"
    return False, f"no clear answer: {outcome}"


def _request_failed(exc: Exception, url: str) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"{type(exc).__name__}: no answer from {url} in time; check the network, api.proxy and the timeouts"
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ProtocolError):
        return f"{type(exc).__name__}: could not reach {url}; check api.base_url, the network, api.proxy and TLS"
    return f"{type(exc).__name__}: the request to {url} failed before any reply; check api.base_url and the key"


def _scrubbed(text: str, settings: Settings) -> str:
    # An exception's text (say, an invalid header value) could carry the key: never print it.
    key = resolve_api_key(settings)
    secret = key.get_secret_value() if key is not None else ""
    return text.replace(secret, "[key]") if secret else text


@dataclass(frozen=True)
class Outcome:
    """One line of the report: its name, ok or not, and the detail (already scrubbed of the key)."""

    name: str
    ok: bool
    detail: str


def main(args: argparse.Namespace) -> int:
    if args.reasons:
        for code, text in REASONS.items():
            print(f"{code:>20}  {text}")
        return 0
    settings = settings_from(args)
    source = args.config or os.environ.get("VOCWATCH_CONFIG") or "defaults (no --config, no VOCWATCH_CONFIG)"
    outcomes = report(settings, str(source), online=args.online)
    return 0 if all(o.ok for o in outcomes) else 1


def report(settings: Settings, source: str, *, online: bool) -> list[Outcome]:
    """Run every check (and the API's with ``online``), print one line each as it ends, return them all."""
    f = settings.folders
    checks: list[Check] = [("config", lambda: (True, source))]
    for name, path in (("inbox", f.inbox), ("done", f.done), ("failed", f.failed)):
        checks.append((f"folders.{name}", functools.partial(_writable, path)))
    checks.append(("same filesystem", lambda: _layout(settings)))
    # Informational (never FAIL): which means tell that a recorder still holds a file open (pairing.py, rule 3).
    events = settings.watch.mode != "poll"
    checks.append(("held-open files", lambda: (True, held_open_means(f.inbox, events=events)[1])))
    checks.append(("ledger", lambda: _ledger(settings)))
    checks.extend(_months(settings))
    http = _http(settings)
    outcomes: list[Outcome] = []
    with contextlib.closing(_client_on(settings, http)) as client:
        checks.append(("api key", lambda: _key(settings, client)))
        if online:
            checks.append(("api health", client.health))
            checks.append(("api key accepted", lambda: _key_accepted(settings, http, client)))
        for name, run in checks:
            try:
                ok, detail = run()
            except Exception as exc:  # a check must report, never crash the report
                # Only the type: an exception's text can quote a header, and so the key.
                ok, detail = False, f"{type(exc).__name__} (its text is withheld: it may quote the key); report this"
            outcome = Outcome(name, ok, _scrubbed(detail, settings))
            outcomes.append(outcome)
            print(f"{'ok' if ok else 'FAIL':>4}  {name:<18} {outcome.detail}")
    return outcomes
