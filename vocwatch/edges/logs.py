"""structlog set-up: JSON lines off a terminal (journald), console on one; secrets scrubbed always."""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
from collections.abc import MutableMapping
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
            if not isinstance(value, str):
                value = value if isinstance(value, int | float | bool | type(None)) else str(value)
            if isinstance(value, str):
                value = self.clean(value)
                if self.redact_digits and key not in _NEVER_REDACTED:
                    value = redact_digits(value)
            event[key] = value
        return event


def redact_digits(text: str) -> str:
    """Digit runs of six or more (phone numbers) become a short stable hash."""
    return _DIGITS.sub(lambda m: "#" + hashlib.sha256(m.group().encode()).hexdigest()[:8], text)


SCRUB = Scrubber()


def configure(level: str = "info", fmt: str = "auto", *, redact: bool = False, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    SCRUB.redact_digits = redact
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else structlog.processors.JSONRenderer()
    )
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


class _BenignStopNoise(logging.Filter):
    """watchdog logs an ERROR when events arrive while its emitter stops; it means nothing to us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()
