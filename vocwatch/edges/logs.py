"""structlog set-up: JSON lines off a terminal (journald), console on one; secrets scrubbed always.

When stderr is the journal itself, each line starts with its syslog priority (``<4>`` for a warning), which
journald strips and keeps as PRIORITY (the unit's SyslogLevelPrefix=, on by default): `journalctl -p` works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Any, TextIO

import structlog

_DIGITS = re.compile(r"\d{6,}")
# Values that never carry a caller's number; every other string is redacted when log.redact is on.
_NEVER_REDACTED = frozenset({"timestamp", "level", "job_id", "sha256", "instance", "version", "logger"})


class Scrubber:
    """Replaces every known secret in every logged value; the key never reaches a log line."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self.redact_digits = False

    def add(self, secret: str) -> None:
        if len(secret) >= 4:
            with self._lock:
                self._secrets.add(secret)

    def clean(self, text: str) -> str:
        with self._lock:
            secrets = tuple(self._secrets)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            event[key] = self._value(key, value)
        return event

    def _value(self, key: str, value: Any) -> Any:
        """JSON's own types stay (lists and mappings too, scrubbed inside); an enum is its value; else a string."""
        if isinstance(value, Enum):
            value = value.value
        if isinstance(value, Mapping):
            return {str(k): self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(key, v) for v in value]
        if isinstance(value, int | float | bool | type(None)):
            return value
        text = self.clean(str(value))
        return redact_digits(text) if self.redact_digits and key not in _NEVER_REDACTED else text


def redact_digits(text: str) -> str:
    """Digit runs of six or more (phone numbers) become a short stable hash."""
    return _DIGITS.sub(lambda m: "#" + hashlib.sha256(m.group().encode()).hexdigest()[:8], text)


SCRUB = Scrubber()

# syslog(3) priorities by structlog level name; journald reads them from a "<N>" line prefix.
PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's own stream socket: $JOURNAL_STREAM names its device and inode."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.StringIO and friends have no descriptor
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PriorityPrefix:
    """Wraps a renderer: its line gets the event's syslog priority in front (``<3>{...}``)."""

    def __init__(self, renderer: Callable[[Any, str, MutableMapping[str, Any]], str]) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = PRIORITY.get(str(event.get("level", name)), 6)
        return f"<{priority}>{self._renderer(logger, name, event)}"


def report(event: str, message: str, *, level: str = "error", human: str = "", stream: TextIO | None = None) -> None:
    """One line from a command that stops before (or without) logging: ``vocwatch: <human>`` on a terminal,
    elsewhere one JSON object (event, level, message) with the journal's priority prefix when stderr is it.
    """
    out = stream or sys.stderr
    message = SCRUB.clean(message)
    if is_terminal(out):
        print(f"vocwatch: {SCRUB.clean(human) or message}", file=out)
        return
    line = json.dumps({"event": event, "level": level, "message": message, "timestamp": datetime.now(UTC).isoformat()})
    prefix = f"<{PRIORITY.get(level, 6)}>" if is_journal(out) else ""
    print(prefix + line, file=out, flush=True)


def configure(level: str = "info", fmt: str = "auto", *, redact: bool = False, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    SCRUB.redact_digits = redact
    console = fmt == "console" or (fmt == "auto" and is_terminal(out))
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=is_terminal(out)) if console else structlog.processors.JSONRenderer()
    )
    if is_journal(out):
        renderer = PriorityPrefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            SCRUB,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; keep them quiet (httpx would log every URL).
    for name in ("httpx", "httpcore", "watchdog"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("watchdog.observers.inotify").addFilter(_BenignStopNoise())
    # What a library logs goes out through structlog too (one format, one priority prefix), not as plain text.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    if not console:  # a crash off a terminal is one JSON line too (with its traceback), not plain text
        sys.excepthook = _log_uncaught
        # A thread's crash and warnings.warn print plain text too. Python's own thread hook only: a test
        # runner's (pytest's) stays, so that it still fails a test whose thread crashed.
        if threading.excepthook is threading.__excepthook__:
            threading.excepthook = _log_thread_crash
        logging.captureWarnings(True)  # as library.log events of the logger py.warnings, level warning


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook off a terminal: the uncaught exception as the event ``process.crashed`` (critical)."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger().critical("process.crashed", exc_info=(kind, exc, tb))


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook off a terminal: a thread's uncaught exception as ``thread.crashed`` (critical)."""
    if issubclass(args.exc_type, SystemExit):  # as Python's own hook: a thread may end itself this way
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    structlog.get_logger().critical("thread.crashed", thread=getattr(args.thread, "name", None), exc_info=exc_info)


class _ToStructlog(logging.Handler):
    """A standard-library record as one event ``library.log`` with the library's logger name and message."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger()
        method = getattr(log, record.levelname.lower(), log.warning)
        try:
            method("library.log", logger=record.name, message=record.getMessage())
        except Exception:  # a log line must never take down the thread that logged it
            self.handleError(record)


class _BenignStopNoise(logging.Filter):
    """watchdog logs an ERROR when events arrive while its emitter stops; it means nothing to us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()
