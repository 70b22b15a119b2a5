"""``vocwatch setup``: the tenant into the config, the API key into a root-only file, then ``check --online``.

For root, after ``apt install ./vocwatch_*.deb``; it prints the one command left. It never prints the key.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import tomlkit
from tomlkit.exceptions import TOMLKitError

from vocwatch.cli.check import Outcome, report
from vocwatch.cli.common import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_UNAVAILABLE,
    EX_USAGE,
    PACKAGE_CONFIG,
    PACKAGE_KEY,
)
from vocwatch.edges.client import key_problem
from vocwatch.edges.config import TENANT_PATTERN, ConfigError, load_settings
from vocwatch.edges.logs import configure

NEXT = "systemctl enable --now vocwatch"
# The key sources the service does not have: the check must try the key just written, as the unit hands it over.
FOREIGN_KEYS = ("VOCWATCH_API_KEY", "CRESCENDO_API_KEY", "CREDENTIALS_DIRECTORY")


class SetupError(Exception):
    """Setup cannot go on: ``status`` (sysexits) and a message that names the file and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Answers:
    """What setup writes: the tenant, the base URL (None: keep the config's) and the key (never shown)."""

    tenant: str
    base_url: str | None
    key: str


def main(args: argparse.Namespace) -> int:
    try:
        return _setup(args)
    except SetupError as exc:
        print(f"vocwatch setup: {exc.message}", file=sys.stderr)
        return exc.status


def _setup(args: argparse.Namespace) -> int:
    config: Path = args.config or PACKAGE_CONFIG
    key_path: Path = args.key_path or PACKAGE_KEY
    # Not root is fine only for paths the caller named both (a test, a staging copy); the package's are root's.
    if os.geteuid() != 0 and (args.config is None or args.key_path is None):
        raise SetupError(
            EX_NOPERM,
            f"run it as root (sudo vocwatch setup): it writes {config} and the root-only key file {key_path}; "
            "to write elsewhere as another user, give both --config PATH and --key-path PATH",
        )
    document = _read_config(config)
    api = document.get("api")
    current = api.get("tenant_id") if isinstance(api, dict) else None
    answers = _ask(args, str(current) if current else None)
    # A symlink (configuration management's) stays one: the file it points to is the one rewritten.
    _write_config(config.resolve(), document, answers)
    print(f"vocwatch setup: wrote api.tenant_id = {answers.tenant!r} to {config}")
    if answers.base_url:
        print(f"vocwatch setup: wrote api.base_url = {answers.base_url!r} to {config}")
    _write_key(key_path, answers.key)
    owner = "root:root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    print(f"vocwatch setup: wrote the API key to {key_path} (mode 0600, {owner})")
    return _check(config, key_path, answers.tenant)


def _read_config(config: Path) -> tomlkit.TOMLDocument:
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SetupError(
            EX_NOINPUT, f"{config} not found: install the vocwatch package (it ships one) or give --config PATH"
        ) from None
    except OSError as exc:
        raise SetupError(EX_NOPERM, f"cannot read {config}: {exc.strerror}") from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise SetupError(
            EX_CONFIG, f"{config} is not valid TOML ({exc}); fix it, then run vocwatch setup again"
        ) from None


def _ask(args: argparse.Namespace, current: str | None) -> Answers:
    """The answers from the options, else (on a terminal) from the operator; the key is read without echo."""
    interactive = sys.stdin.isatty() and args.key_file != "-"
    tenant = args.tenant
    if tenant is None and interactive:
        shown = f" [{current}]" if current else ""
        tenant = input(f"Crescendo tenant id{shown}: ").strip() or current
    if not tenant:
        raise SetupError(EX_USAGE, "no tenant: give --tenant ID (or run it on a terminal to be asked)")
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise SetupError(
            EX_USAGE,
            f"tenant id {tenant!r}: only letters, digits, '.', '_' and '-' (the id Crescendo gave you); "
            "nothing was written",
        )
    if args.key_file == "-":
        raw = sys.stdin.read()
    elif args.key_file is not None:
        try:
            # Not UTF-8 (a UTF-16 editor): U+FFFD, which key_problem refuses below (65), never a traceback.
            raw = Path(args.key_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SetupError(EX_NOINPUT, f"cannot read the key file {args.key_file}: {exc.strerror}") from None
    elif interactive:
        raw = getpass.getpass("Crescendo API key (not shown): ")
    else:
        raise SetupError(EX_USAGE, "no key: give --key-file PATH, or --key-file - with the key on stdin")
    key = raw.strip()
    if not key:
        raise SetupError(EX_DATAERR, "the API key given is empty; nothing was written")
    problem = key_problem(key)
    if problem is not None:
        raise SetupError(EX_DATAERR, f"{problem}; nothing was written")
    return Answers(tenant=tenant, base_url=args.base_url, key=key)


def _write_config(config: Path, document: tomlkit.TOMLDocument, answers: Answers) -> None:
    """Set the keys in place (comments, order and every other key stay), validate, then replace the file."""
    api = document.get("api")
    if not isinstance(api, dict):
        api = tomlkit.table()
        document["api"] = api
    api["tenant_id"] = answers.tenant
    if answers.base_url:
        api["base_url"] = answers.base_url
    st = config.stat()
    with _staged(config, mode=st.st_mode & 0o7777, owner=(st.st_uid, st.st_gid)) as (fh, staged):
        fh.write(tomlkit.dumps(document).encode("utf-8"))
        fh.flush()
        try:
            load_settings(staged)
        except ConfigError as exc:
            problems = "; ".join(p.replace(str(staged), str(config)) for p in exc.problems)
            raise SetupError(EX_CONFIG, f"{problems}; {config} is unchanged") from None


def _write_key(key_path: Path, key: str) -> None:
    """The key alone on one line, 0600 and (as root) root:root from its first byte on: systemd reads it as root."""
    owner = (0, 0) if os.geteuid() == 0 else None
    with _staged(key_path, mode=0o600, owner=owner) as (fh, _):
        fh.write(key.encode("utf-8") + b"\n")


@contextlib.contextmanager
def _staged(target: Path, *, mode: int, owner: tuple[int, int] | None) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file beside ``target`` with its mode and owner set before any byte; renamed over it on success."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.vocwatch-setup.")
    except OSError as exc:
        status = EX_NOPERM if isinstance(exc, PermissionError) else EX_CANTCREAT
        raise SetupError(status, f"cannot write beside {target}: {exc.strerror}") from None
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fh.fileno(), *owner)
            yield fh, staged
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(staged, target)
    except OSError as exc:  # a folder at the path, an immutable file, a read-only mount: say so, change nothing
        staged.unlink(missing_ok=True)
        status = EX_NOPERM if isinstance(exc, PermissionError) else EX_CANTCREAT
        raise SetupError(
            status, f"cannot replace {target}: {exc.strerror}; fix or move it, then run setup again"
        ) from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    # The rename itself must survive a power cut: fsync the folder.
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _check(config: Path, key_path: Path, tenant: str) -> int:
    """``vocwatch check --online`` on what was written, with the key file alone as its key (as the unit has)."""
    for var in FOREIGN_KEYS:
        os.environ.pop(var, None)
    try:
        settings = load_settings(config, api={"api_key_file": key_path})
    except ConfigError as exc:
        raise SetupError(EX_CONFIG, "; ".join(exc.problems)) from None
    configure(settings.log.level, settings.log.format, redact=settings.log.redact)
    print(f"vocwatch setup: checking (vocwatch check --config {config} --online):")
    outcomes = {o.name: o for o in report(settings, str(config), online=True)}
    failed = [o for o in outcomes.values() if not o.ok]
    if not failed:
        # systemd reads the credential and the daemon its config at start only: a running service needs a restart.
        running = _service_running() and config == PACKAGE_CONFIG and key_path == PACKAGE_KEY
        left = (
            "systemctl restart vocwatch  (it is running: it reads the key and the config at start)" if running else NEXT
        )
        print(f"vocwatch setup: all checks passed. The one command left:\n    {left}")
        return 0
    return _failed(outcomes, failed, config, tenant)


def _failed(outcomes: dict[str, Outcome], failed: list[Outcome], config: Path, tenant: str) -> int:
    """The exit status for the first cause that the operator must fix, and one line that says it."""
    names = ", ".join(o.name for o in failed)
    again = f"{config} and the key are written: fix it, then run vocwatch setup again"
    accepted = outcomes.get("api key accepted")
    detail = accepted.detail if accepted is not None and not accepted.ok else ""
    healthy = outcomes["api health"].ok
    # A 404 with /health failing too is a base URL that is not the API, not a refused key.
    if detail.startswith(("refused: HTTP 401", "refused: HTTP 403")) or (healthy and detail.startswith("refused")):
        status, why = EX_NOPERM, f"the API refused the key for tenant {tenant}: check the key and --tenant"
    elif not healthy:
        status, why = (
            EX_UNAVAILABLE,
            "the API did not answer: check api.base_url (--base-url), the network and the proxy",
        )
    else:
        status, why = EX_CONFIG, "the FAIL lines above say what is wrong on this host or in the config"
    print(f"vocwatch setup: FAILED ({names}): {why}; {again}", file=sys.stderr)
    return status


def _service_running() -> bool:
    """Whether systemd runs vocwatch.service now (False where there is no systemctl or no systemd)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    try:
        done = subprocess.run([systemctl, "is-active", "--quiet", "vocwatch.service"], timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
