"""``vocwatch check`` (one line per check, ok or FAIL with a hint) and ``vocwatch status JOB_ID``."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from vocwatch.cli import EX_UNAVAILABLE, settings_from
from vocwatch.client import CrescendoClient, JobStatus, build_http
from vocwatch.config import ConfigError, Settings, api_key_sources, resolve_api_key
from vocwatch.daemon import check_layout
from vocwatch.model import AuthProblem
from vocwatch.reasons import REASONS

Check = tuple[str, Callable[[], tuple[bool, str]]]


def _writable(path: Path) -> tuple[bool, str]:
    if not path.is_dir():
        return False, f"{path} does not exist; create it (install -d -o vocwatch {path})"
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


def _ledger(settings: Settings) -> tuple[bool, str]:
    path = settings.ledger.path
    if not path.exists():
        return _writable(path.parent)[0], f"{path} will be created at first start"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
        db.close()
    except sqlite3.Error as exc:
        return False, f"{path}: {exc}; restore it from a backup or move it aside"
    return result == "ok", f"{path}: integrity {result}"


def _client(settings: Settings) -> CrescendoClient:
    api = settings.api
    http = build_http(
        workers=1,
        connect_timeout=api.connect_timeout_seconds,
        read_timeout=30,
        verify=str(api.ca_bundle) if api.ca_bundle else api.verify_tls,
        trust_env=api.trust_env,
        proxy=api.proxy,
    )
    return CrescendoClient(
        http=http, base_url=str(api.base_url), tenant_id=api.tenant_id, key=lambda: resolve_api_key(settings)
    )


def _key_accepted(settings: Settings) -> tuple[bool, str]:
    # A status query for a job that cannot exist: 404 means the key and tenant were accepted.
    outcome = _client(settings).job_status("vocwatch-check-probe")
    if isinstance(outcome, AuthProblem):
        return False, f"refused: {outcome.message}; fix the key or api.tenant_id"
    if isinstance(outcome, JobStatus) or getattr(outcome, "status", None) == 404:
        return True, f"key accepted for tenant {settings.api.tenant_id}"
    return False, f"no clear answer: {outcome}"


def run_checks(args: argparse.Namespace) -> int:
    if args.reasons:
        for code, text in REASONS.items():
            print(f"{code:>20}  {text}")
        return 0
    settings = settings_from(args)
    f = settings.folders
    checks: list[Check] = [
        ("config", lambda: (True, f"{args.config or os.environ.get('VOCWATCH_CONFIG', 'defaults')}"))
    ]
    for name, path in (("inbox", f.inbox), ("done", f.done), ("failed", f.failed)):
        checks.append((f"folders.{name}", lambda p=path: _writable(p)))  # type: ignore[misc]
    checks.append(("same filesystem", lambda: _layout(settings)))
    checks.append(("ledger", lambda: _ledger(settings)))
    checks.append(
        (
            "api key",
            lambda: (
                resolve_api_key(settings) is not None,
                f"present (looked in {api_key_sources(settings)})"
                if resolve_api_key(settings)
                else f"missing: put it in one of {api_key_sources(settings)}",
            ),
        )
    )
    if args.online:
        checks.append(("api health", lambda: _client(settings).health()))
        checks.append(("api key accepted", lambda: _key_accepted(settings)))
    failures = 0
    for name, run in checks:
        try:
            ok, detail = run()
        except Exception as exc:  # a check must report, never crash the report
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        failures += not ok
        print(f"{'ok' if ok else 'FAIL':>4}  {name:<18} {detail}")
    return 0 if failures == 0 else 1


def job_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    outcome = _client(settings).job_status(args.job_id)
    if isinstance(outcome, JobStatus):
        print(json.dumps(dict(outcome.raw), indent=2))
        return 0
    print(f"vocwatch: job {args.job_id}: {outcome}", file=sys.stderr)
    return EX_UNAVAILABLE
