"""Group commit: many threads' fsyncs of one file or folder, made one at a time and shared.

A thread that wrote (a ledger commit into the WAL, a rename into a folder) takes a ticket, then waits
until an fsync that *began after* its write has ended; the first waiter does that fsync for every write
before it (the way databases amortise their log flushes). No thread returns before its own write is
on disk, so nothing the caller was promised weakens; four workers share one flush instead of four.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from vocwatch.edges.effects import Effect, point


class GroupSync:
    """Shared fsyncs of one target; ``sync`` makes every write made before it began durable."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._cond = threading.Condition()
        self._written = 0  # tickets handed out: writes made
        self._synced = 0  # every write up to this ticket is durable
        self._syncing = False
        self.flushes = 0  # fsyncs made (for tests and the benchmark: flushes per write)

    def ticket(self) -> int:
        """Call after the write: the number an fsync must cover."""
        with self._cond:
            self._written += 1
            return self._written

    def wait(self, ticket: int) -> None:
        """Return once ``ticket``'s write is durable: lead an fsync, or wait for the one in progress and
        then lead the next. An fsync that raised raises in its leader; the next waiter tries again."""
        with self._cond:
            while self._synced < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                upto = self._written  # every write so far happened before this fsync begins
                self._cond.release()
                try:
                    self._sync()
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self.flushes += 1
                self._synced = max(self._synced, upto)

    def sync(self) -> None:
        """A write just made, durable before this returns."""
        self.wait(self.ticket())

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._syncing and self._synced == self._written


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """fsync ``path`` (announced at the effect seam); a directory that cannot be opened or synced (some
    network filesystems refuse) is skipped, as before group commit."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        point(Effect.FSYNC, path)
        try:
            os.fsync(fd)
        except OSError:
            if not directory:
                raise
    finally:
        os.close(fd)


class FolderSyncs:
    """One GroupSync per folder: the renames into a folder made durable by shared directory fsyncs."""

    LIMIT = 256  # folders remembered (done_layout makes one a day); idle ones are dropped past it

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, GroupSync] = {}

    def sync(self, folder: Path) -> None:
        """The renames made into ``folder`` so far, durable before this returns."""
        key = os.fspath(folder)
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                if len(self._groups) >= self.LIMIT:
                    self._groups = {k: g for k, g in self._groups.items() if not g.idle}
                group = self._groups[key] = GroupSync(lambda: fsync_path(folder, directory=True))
            ticket = group.ticket()
        group.wait(ticket)
