"""The only watchdog import: an observer on the inbox that hands changed paths on, and heals itself."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import structlog
from watchdog import events as watchdog_events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from vocwatch.core import filesystems
from vocwatch.edges.inbox import MAX_DEPTH, folder_depth
from vocwatch.edges.mounts import fs_type, mounts_below
from vocwatch.edges.validate import LeaseReach, lease_reach

Mode = Literal["auto", "inotify", "poll"]
# on_event(path, event, source): the planner's vocabulary, listed in planner.py.
OnEvent = Callable[[str, str, str | None], None]
Hint = tuple[str, str, str | None]
INOTIFY_FIX = (
    "raise fs.inotify.max_user_watches and fs.inotify.max_user_instances "
    "(sysctl -w fs.inotify.max_user_watches=524288, and persist it in /etc/sysctl.d/), "
    'or set watch.mode = "poll"'
)
# "modified" (a write) and the opens and closes tell whether a writer holds a file (pairing.py, rule 3).
_PASSED_ON = frozenset({"opened", "modified", "closed", "closed_no_write", "deleted"})
# Filesystems where inotify sees only this host's writes (and leases, if any, only this host's opens).
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs", "afs", "lustre"}
)
UNDETECTABLE_FIX = (
    "nothing here can tell that a recorder still holds a file open: only watch.settle_seconds protects, so "
    "set it above the longest time a recorder goes without writing (its flush interval), or have producers "
    "write under a temporary name and rename"
)


# The event types translate() makes hints of: all but a folder's "modified" and "attrib". Watchdog adds
# a folder "modified" to every create, delete, move and write-close in it (each of our claims brings two
# deletes and two of these), and dropping them in the emitter spares the observer and handler threads.
# The inotify mask stays the same. Looked up by name: older watchdog versions lack the newer types.
HINTED_EVENTS = (
    "FileCreatedEvent",
    "DirCreatedEvent",
    "FileDeletedEvent",
    "DirDeletedEvent",
    "FileMovedEvent",
    "DirMovedEvent",
    "FileModifiedEvent",
    "FileAttribEvent",
    "FileOpenedEvent",
    "FileClosedEvent",
    "FileClosedNoWriteEvent",
)


def hinted_event_types() -> list[type[FileSystemEvent]]:
    return [t for name in HINTED_EVENTS if isinstance(t := getattr(watchdog_events, name, None), type)]


def translate(event: FileSystemEvent) -> list[Hint]:
    """Watchdog's event as the planner's hints: (path, event, source path or None)."""
    src = os.fsdecode(event.src_path)
    dest = os.fsdecode(event.dest_path) if event.dest_path else ""
    kind = event.event_type
    if event.is_directory:
        if kind == "deleted":
            return [(src, "folder_gone", None)]
        if kind == "moved":
            hints: list[Hint] = [(src, "folder_gone", None)]
            return [*hints, (dest, "changed", None)] if dest else hints
        # A folder's own "modified" says only what its files' events say; walking it each time is waste.
        return [(src, "changed", None)] if kind == "created" else []
    if kind == "moved":
        return [(dest, "moved", src)] if dest else [(src, "deleted", None)]
    if kind == "created":
        # Watchdog makes up "created" for the files of a new folder: their opens were never seen.
        return [(src, "changed" if event.is_synthetic else "created", None)]
    return [(src, kind if kind in _PASSED_ON else "changed", None)]


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


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it in /proc/self/mounts)."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return None
    return kind


def inbox_lease_reach(inbox: Path) -> LeaseReach:
    """``lease_reach`` for the inbox's filesystem, asked beside the inbox where it can be (the spool folder
    is on the same filesystem): the probe's temporary file is then no event in the inbox."""
    folders = [inbox]
    with contextlib.suppress(OSError):
        if os.stat(inbox.parent).st_dev == os.stat(inbox).st_dev:
            folders.insert(0, inbox.parent)
    for folder in folders:
        reach = lease_reach(folder)
        if reach is not None:
            return reach
    return "none"


def held_open_means(inbox: Path, *, events: bool, reach: LeaseReach | None = None) -> tuple[dict[str, Any], str]:
    """Which means tell that a writer still holds a file in ``inbox`` open (pairing.py, rule 3), as log
    fields and as one line: inotify's open and close events (``events``: not polling) and read leases."""
    fstype = filesystem_type(inbox)
    remote = fstype in NETWORK_FS
    if reach is None:
        reach = inbox_lease_reach(inbox)
    fields: dict[str, Any] = {
        "open_close_events": events and not remote,
        "read_lease": reach,
        "filesystem": fstype,
    }
    seen = "no (polling)" if not events else f"only this host's writers ({fstype})" if remote else "yes (inotify)"
    lease = {
        "any": "any file (CAP_LEASE)",
        "own": "only files vocwatch's user owns (no CAP_LEASE)",
        "none": f"no ({fstype or 'this filesystem'} refuses leases)",
    }[reach]
    line = f"open/close events: {seen}; read lease: {lease}"
    if not fields["open_close_events"] and reach == "none":
        line += "; " + UNDETECTABLE_FIX
    return fields, line


class _Handler(FileSystemEventHandler):
    """Only enqueues: the planner does all the looking, on its own thread."""

    def __init__(self, on_event: OnEvent) -> None:
        self._on_event = on_event

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path, kind, src in translate(event):
            self._on_event(path, kind, src)


class Watcher:
    def __init__(
        self,
        root: Path,
        on_event: OnEvent,
        *,
        mode: Mode,
        recursive: bool,
        poll_interval_s: float,
        log: Any = None,
    ) -> None:
        self._root = root
        self._on_event = on_event
        self._mode = mode
        self._recursive = recursive
        self._poll_interval = poll_interval_s
        self._log = log or structlog.get_logger("vocwatch.edges.watcher")
        self._observer: BaseObserver | None = None
        self._root_id: tuple[int, int] | None = None
        self._reported: str | None = None
        self._started_once = False
        self._means_logged: str | None = None
        self._lease_reach: LeaseReach | None = None  # probed once, before the first observer starts
        self.kind = "none"
        self.restarts = 0
        self.problem: str | None = "not started"
        self._said: str | None = None  # the last watch.mode choice logged: once, and again only if it changes
        self.choice = filesystems.Choice(mode if mode != "auto" else "inotify")

    def choose(self) -> filesystems.Choice:
        """What ``watch.mode`` comes to here: for "auto", polling when the inbox (or, recursive, a mount below
        it) is on a filesystem where inotify misses remote writes (NFS, CIFS/SMB, FUSE, ...)."""
        return choose_mode(self._mode, self._root, recursive=self._recursive)

    def start(self) -> bool:
        """Start watching; False (logged once per outage) if the inbox cannot be watched right now."""
        try:
            st = os.stat(self._root)
        except OSError as exc:
            return self._down(
                "watch.inbox_missing",
                f"inbox {self._root} is missing ({exc.strerror})",
                "create the inbox folder, mount its share, or fix folders.inbox; vocwatch retries by itself",
            )
        if not stat.S_ISDIR(st.st_mode):
            return self._down("watch.inbox_missing", f"inbox {self._root} is not a folder", "make it a folder")
        if self._lease_reach is None:  # before the observer: its temporary file is no event
            self._lease_reach = inbox_lease_reach(self._root)
        observer = self._start_observer()
        if observer is None:
            return False
        self._observer = observer
        self._root_id = (st.st_dev, st.st_ino)
        self.kind = "poll" if isinstance(observer, PollingObserverVFS) else "events"
        self.problem = self._reported = None
        self._log.info("watch.started", inbox=str(self._root), observer=self.kind, recursive=self._recursive)
        self._log_held_open_means()
        self._on_event(
            str(self._root), "watching", "events" if self.kind == "events" else f"poll:{self._poll_interval}"
        )
        if self._started_once:
            # Files that came while nothing watched announced themselves to no one.
            self._on_event(str(self._root), "rescan", None)
        self._started_once = True
        return True

    def _log_held_open_means(self) -> None:
        """Once (and again only if the observer's kind changes): how held-open files are told apart."""
        if self._means_logged == self.kind:
            return
        self._means_logged = self.kind
        fields, _ = held_open_means(self._root, events=self.kind == "events", reach=self._lease_reach)
        if fields["open_close_events"] or fields["read_lease"] != "none":
            self._log.info("watch.held_open_detection", inbox=str(self._root), **fields)
        else:
            self._log.warning("watch.held_open_undetectable", inbox=str(self._root), **fields, fix=UNDETECTABLE_FIX)

    def _start_observer(self) -> BaseObserver | None:
        self.choice = self.choose()
        shown = self.choice.show()
        if self._mode == "auto" and shown != self._said:
            self._said = shown
            if self.choice.mode == "poll":
                self._log.info(
                    "watch.polling",
                    paths=[path for path, _ in self.choice.polled],
                    why=[why for _, why in self.choice.polled],
                    note='watch.mode = "auto": inotify misses writes made elsewhere on these filesystems; '
                    "the whole inbox is polled every watch.poll_interval_seconds",
                )
            else:
                self._log.info("watch.events", inbox=str(self._root), why=self.choice.why)
        if self.choice.mode != "poll":
            try:
                return self._launch(events=True)
            except OSError as exc:
                limit = exc.errno in (errno.ENOSPC, errno.EMFILE)
                if not limit or self._mode == "inotify":
                    self._down(
                        "watch.inotify_limit" if limit else "watch.failed",
                        f"cannot watch {self._root}: {exc}",
                        INOTIFY_FIX if limit else "check the inbox",
                    )
                    return None
                self._log.warning("watch.inotify_limit", error=str(exc), fix=INOTIFY_FIX + "; polling meanwhile")
            except Exception as exc:
                # watchdog's own failure, such as the RecursionError of its recursive walk that adds the watches
                # of a very deep tree: polling (depth-limited) still works, and nothing may stop the daemon.
                self._log.warning(
                    "watch.events_failed",
                    inbox=str(self._root),
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    fix=f"polling instead; keep the inbox tree shallower than {MAX_DEPTH} folders, "
                    'or set watch.mode = "poll"',
                )
        try:
            return self._launch(events=False)
        except Exception as exc:
            self._down("watch.failed", f"cannot poll {self._root}: {exc}", "check the inbox and its permissions")
            return None

    def _listdir(self, path: str | None) -> Iterator[os.DirEntry[str]]:
        """os.scandir for the poller, without the folders beyond MAX_DEPTH: its snapshot walk recurses."""
        folder = path if path is not None else str(self._root)
        rel = os.path.relpath(folder, self._root)
        with os.scandir(folder) as it:
            if folder_depth(rel) < MAX_DEPTH:
                return iter(list(it))
            return iter([entry for entry in it if not entry.is_dir(follow_symlinks=False)])

    def _launch(self, *, events: bool) -> BaseObserver:
        observer: BaseObserver
        if events:
            from watchdog.observers import Observer

            _shorten_move_pairing()
            observer = Observer()  # opens an inotify instance: can fail with EMFILE at once
        else:
            # lstat, not stat: a symlink to / or a link loop in the inbox must not be walked at every poll.
            observer = PollingObserverVFS(os.lstat, self._listdir, polling_interval=self._poll_interval)
        try:
            observer.schedule(
                _Handler(self._on_event),
                str(self._root),
                recursive=self._recursive,
                event_filter=hinted_event_types(),
            )
            observer.start()
        except BaseException:
            observer.stop()  # release the inotify instance and its reader thread
            raise
        return observer

    def _down(self, event: str, problem: str, fix: str) -> bool:
        self.problem = problem
        self._on_event(str(self._root), "not_watching", None)
        if self._reported != problem:  # once per outage: heal() retries every second
            self._reported = problem
            self._log.error(event, problem=problem, fix=fix)
        return False

    def healthy(self) -> bool:
        """Is the observer running on the inbox that exists now (not a deleted, re-created one)?"""
        return self._diagnose() is None

    def _diagnose(self) -> str | None:
        observer = self._observer
        if observer is None:
            return self.problem or "not watching"
        if not observer.is_alive():
            return "the observer thread stopped"
        try:
            emitters = list(observer.emitters)
        except RuntimeError:  # the set changed while we copied it: look again at the next tick
            return None
        if not emitters or not all(emitter.is_alive() for emitter in emitters):
            return "the observer stopped watching the inbox"
        reader = getattr(observer, "_inotify_fd", None)  # watchdog's inotify reader thread, if any
        if isinstance(reader, threading.Thread) and not reader.is_alive():
            return "the inotify reader thread died"
        try:
            st = os.stat(self._root)
        except OSError as exc:
            return f"inbox {self._root} is gone ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self._root_id:
            return f"inbox {self._root} was replaced by another folder"
        return None

    @property
    def observer(self) -> BaseObserver | None:
        """The running watchdog observer, for diagnostics."""
        return self._observer

    def heal(self) -> bool:
        """Restart a dead or stale observer; True when watching afterwards."""
        try:
            why = self._diagnose()
            if why is None:
                return True
            if self._observer is not None:
                self.problem = why
                self._on_event(str(self._root), "not_watching", None)
                self._log.warning("watch.lost", inbox=str(self._root), problem=why, fix="restarting the observer")
                self.stop()
                self.restarts += 1
            return self.start()
        except Exception as exc:  # healing must never stop the daemon: the rescans go on, and so do retries
            self._observer = None
            return self._down(
                "watch.failed", f"cannot restart watching {self._root}: {type(exc).__name__}", "check the inbox"
            )

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        self.kind = "none"
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)


def choose_mode(mode: Mode, inbox: Path, *, recursive: bool) -> filesystems.Choice:
    """core.filesystems.choose over the inbox's filesystem type and, when recursive, the mounts below it."""
    if mode != "auto":
        return filesystems.choose(mode, [])
    types: list[tuple[str, int | None]] = [(str(inbox), fs_type(inbox))]
    if recursive:
        types += [(point, fs_type(point)) for point in mounts_below(inbox)]
    return filesystems.choose(mode, types)
