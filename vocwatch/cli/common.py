"""What every command shares: settings from --config, and the exit statuses (sysexits, os.EX_*)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `vocwatch --help` and the parser load no pydantic or structlog
    from vocwatch.edges.config import Settings

EX_OK = os.EX_OK
EX_USAGE = os.EX_USAGE  # 64
EX_DATAERR = os.EX_DATAERR  # 65
EX_NOINPUT = os.EX_NOINPUT  # 66
EX_UNAVAILABLE = os.EX_UNAVAILABLE  # 69
EX_SOFTWARE = os.EX_SOFTWARE  # 70
EX_CANTCREAT = os.EX_CANTCREAT  # 73
EX_TEMPFAIL = os.EX_TEMPFAIL  # 75: try again later (the instance is busy)
EX_NOPERM = os.EX_NOPERM  # 77
EX_CONFIG = os.EX_CONFIG  # 78: a bad config; the unit never restarts on it

# Where the Debian package puts the config (a conffile) and where its unit reads the key (LoadCredential=).
PACKAGE_CONFIG = Path("/etc/vocwatch/config.toml")
PACKAGE_KEY = Path("/etc/vocwatch/api-key")


def settings_from(args: argparse.Namespace) -> Settings:
    from vocwatch.edges.config import load_settings
    from vocwatch.edges.logs import configure

    settings = load_settings(getattr(args, "config", None))
    configure(settings.log.level, settings.log.format, redact=settings.log.redact)
    return settings


def load_testing(module: str, command: str) -> ModuleType | None:
    """``vocwatch.testing.<module>``, or None after saying how to install the ``sim`` extra it needs."""
    try:
        return importlib.import_module(f"vocwatch.testing.{module}")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("vocwatch"):
            raise
        print(
            f"vocwatch {command}: needs the simulator's libraries ({exc.name} is not installed); "
            "install them with: pip install 'vocwatch[sim]'",
            file=sys.stderr,
        )
        return None


def quiet_broken_pipe(run: Callable[[], int]) -> int:
    """``run()``, but a reader of stdout that went away (``vocwatch ledger list | head``) ends it quietly
    with 141 (128 + SIGPIPE, what a shell reports for a Unix tool its pipe ended), not with a traceback."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()  # here, not in the interpreter's exit, where a closed pipe prints a warning
    except BrokenPipeError:
        # Python's own advice (the signal module's note on SIGPIPE): point stdout at /dev/null so that the
        # interpreter's last flush is quiet too. SIGPIPE stays ignored: the daemon's sockets rely on EPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
