"""The only watchdog import: an observer on the inbox that hands changed paths on, and heals itself."""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

Mode = Literal["auto", "inotify", "poll"]
_HINTED = frozenset({"created", "modified", "moved", "closed", "deleted"})
# watchdog holds each IN_MOVED_FROM that has no IN_MOVED_TO yet for 0.5 s, to pair the two, in a FIFO
# queue: every claim (a rename out of the inbox, never paired) held back all later events by up to
# 0.5 s, so a steady stream of drops waited ~0.3-0.5 s each. Events are only hints here; 10 ms still
# pairs the two halves of a rename inside the inbox (they come in one read).
MOVE_PAIRING_DELAY_S = 0.01
_MOVE_PAIRING = (
    ("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),  # watchdog >= 6
    ("watchdog.observers.inotify_buffer", "InotifyBuffer"),  # watchdog 4 and 5
)


def _shorten_move_pairing() -> None:
    for module_name, class_name in _MOVE_PAIRING:
        try:
            holder = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            continue
        if holder is not None and isinstance(getattr(holder, "delay", None), int | float):
            holder.delay = min(holder.delay, MOVE_PAIRING_DELAY_S)


class _Handler(FileSystemEventHandler):
    """Only enqueues: the planner does all the looking, on its own thread."""

    def __init__(self, on_path: Callable[[str], None]) -> None:
        self._on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _HINTED:
            return
        path = getattr(event, "dest_path", "") or event.src_path
        self._on_path(os.fsdecode(path))


class Watcher:
    def __init__(
        self,
        root: Path,
        on_path: Callable[[str], None],
        *,
        mode: Mode,
        recursive: bool,
        poll_interval_s: float,
        log: Any = None,
    ) -> None:
        self._root = root
        self._on_path = on_path
        self._mode = mode
        self._recursive = recursive
        self._poll_interval = poll_interval_s
        self._log = log or structlog.get_logger("vocwatch.watcher")
        self._observer: BaseObserver | None = None
        self._root_id: tuple[int, int] | None = None
        self.kind = "none"
        self.restarts = 0

    def start(self) -> bool:
        """Start watching; False (logged) if the inbox cannot be watched right now."""
        try:
            st = os.stat(self._root)
        except OSError as exc:
            self._log.error("watch.inbox_missing", inbox=str(self._root), error=exc.strerror,
                            fix="create the inbox folder or fix folders.inbox; vocwatch retries by itself")
            return False
        observer = self._make_observer()
        try:
            observer.schedule(_Handler(self._on_path), str(self._root), recursive=self._recursive)
            observer.start()
        except OSError as exc:
            observer.stop()
            if exc.errno in (errno.ENOSPC, errno.EMFILE) and self._mode == "auto":
                self._log.warning(
                    "watch.inotify_limit",
                    error=str(exc),
                    fix="raise fs.inotify.max_user_watches / max_user_instances (sysctl), "
                    "or set watch.mode = \"poll\"; falling back to polling now",
                )
                observer = PollingObserver(timeout=self._poll_interval)
                observer.schedule(_Handler(self._on_path), str(self._root), recursive=self._recursive)
                observer.start()
            else:
                self._log.error("watch.failed", inbox=str(self._root), error=str(exc))
                return False
        self._observer = observer
        self._root_id = (st.st_dev, st.st_ino)
        self.kind = "poll" if isinstance(observer, PollingObserver) else "events"
        self._log.info("watch.started", inbox=str(self._root), observer=type(observer).__name__,
                       recursive=self._recursive)
        return True

    def _make_observer(self) -> BaseObserver:
        if self._mode == "poll":
            return PollingObserver(timeout=self._poll_interval)
        from watchdog.observers import Observer

        _shorten_move_pairing()
        observer: BaseObserver = Observer()
        return observer

    def healthy(self) -> bool:
        """Is the observer running on the inbox that exists now (not a deleted, re-created one)?"""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        if not all(emitter.is_alive() for emitter in observer.emitters) or not observer.emitters:
            return False
        try:
            st = os.stat(self._root)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._root_id

    def heal(self) -> bool:
        """Restart a dead or stale observer; True when watching afterwards."""
        if self.healthy():
            return True
        if self._observer is not None:
            self._log.warning("watch.lost", inbox=str(self._root), fix="restarting the observer")
            self.stop()
            self.restarts += 1
        return self.start()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
