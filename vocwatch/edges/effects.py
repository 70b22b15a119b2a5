"""The one seam where every effect on the world is announced before it happens.

Renames, links, unlinks, writes, fsyncs, ledger commits (and a test's uploads) call ``point`` first. In
production nothing listens; the crash-point test installs a listener that dies at the k-th effect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum
from typing import Protocol


class Effect(StrEnum):
    RENAME = "rename"
    LINK = "link"
    UNLINK = "unlink"
    WRITE = "write"
    FSYNC = "fsync"
    COMMIT = "commit"
    SEND = "send"
    REPLY = "reply"


class Listener(Protocol):
    def before(self, effect: Effect, target: str) -> None: ...


_listener: Listener | None = None


def point(effect: Effect, target: object) -> None:
    """Announce an effect about to happen; a listener may raise to stop the world here."""
    if _listener is not None:
        _listener.before(effect, str(target))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Install ``listener`` for the duration (tests only: one world at a time)."""
    global _listener
    previous, _listener = _listener, listener
    try:
        yield
    finally:
        _listener = previous
