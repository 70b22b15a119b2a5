"""The planner thread: owns what is known of the inbox, decides with pairing.plan, claims, queues.

Watchdog events and worker completions are only hints that make it look sooner; the directory
scan (at start and every ``rescan_seconds``) is the truth.
"""

from __future__ import annotations

import fnmatch
import heapq
import os
import queue
import re
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from vocwatch import pairing
from vocwatch.folders import Claimed, Folders
from vocwatch.model import Clock, Pair
from vocwatch.pairing import Entry, Rules
from vocwatch.pipeline import error_document
from vocwatch.pool import Pool

PLAN_SLICE = 5000  # pair groups planned at a time


@dataclass(frozen=True, slots=True)
class ScanOptions:
    rules: Rules
    ignore: tuple[str, ...]
    recursive: bool
    rescan_s: float


class Planner:
    def __init__(self, *, folders: Folders, pool: Pool, clock: Clock, options: ScanOptions, log: Any = None) -> None:
        self._folders = folders
        self._pool = pool
        self._clock = clock
        self._opts = options
        self._root = folders.inbox
        # One compiled pattern instead of fnmatch per pattern per name: the scan calls it per file.
        either = "|".join(f"(?:{fnmatch.translate(p)})" for p in options.ignore) or "(?!)"
        self._ignore = re.compile(either).match
        self._hints: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._entries: dict[PurePosixPath, Entry] = {}
        # Lists, not sets: a group holds two or three names, and 100,000 small sets cost 27 MB.
        self._groups: dict[tuple[str, str], list[PurePosixPath]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._deadlines: list[tuple[float, tuple[str, str]]] = []
        self._ready: deque[Pair] = deque()
        self._ready_set: set[Pair] = set()
        self._leftovers: deque[Claimed] = deque()
        self._stop = threading.Event()
        self._log = log or structlog.get_logger("vocwatch.planner")
        self.scans = 0
        self.last_progress = clock.monotonic()

    # -- called from other threads ---------------------------------------------------------

    def hint(self, path: str | None = None) -> None:
        """Something may have changed at ``path`` (None: just look again). Never blocks."""
        self._hints.put(path)

    def stop(self) -> None:
        self._stop.set()
        self._hints.put(None)

    @property
    def pending(self) -> int:
        return len(self._entries)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        next_scan = self._clock.monotonic()
        while not self._stop.is_set():
            now = self._clock.monotonic()
            if now >= next_scan:
                self.rescan()
                next_scan = now + self._opts.rescan_s
            self.step()
            self.last_progress = self._clock.monotonic()
            timeout = min(next_scan, self._deadlines[0][0] if self._deadlines else next_scan) - self._clock.monotonic()
            try:
                first = self._hints.get(timeout=max(0.0, min(timeout, 1.0)))
            except queue.Empty:
                continue
            self._take_hint(first)
            while True:
                try:
                    self._take_hint(self._hints.get_nowait())
                except queue.Empty:
                    break

    def rescan(self) -> None:
        """Walk the inbox (the truth), and pick up pairs left in work/ that no worker holds."""
        now = self._clock.time()
        seen: set[PurePosixPath] = set()
        for rel, st in self._walk(self._root):
            seen.add(rel)
            self._observe(rel, st, now)
        for rel in [r for r in self._entries if r not in seen]:
            self._forget(rel)
        for claimed in self._folders.claims_in_work():
            if not self._pool.owns(claimed) and all(c.audio != claimed.audio for c in self._leftovers):
                self._leftovers.append(claimed)
        self.scans += 1

    def step(self) -> None:
        """Plan the groups that changed or fell due, then feed the pool while it has room."""
        mono = self._clock.monotonic()
        while self._deadlines and self._deadlines[0][0] <= mono:
            self._dirty.add(heapq.heappop(self._deadlines)[1])
        dirty, self._dirty = list(self._dirty), set()
        # In slices: planning a 100,000-pair backlog at once held all its groups twice (peak RSS).
        for start in range(0, len(dirty), PLAN_SLICE):
            keys = dirty[start : start + PLAN_SLICE]
            entries = [self._entries[r] for key in keys for r in self._groups.get(key, ())]
            decided = pairing.plan(entries, self._clock.time(), self._opts.rules)
            for pair in decided.ready:
                if pair not in self._ready_set:
                    self._ready_set.add(pair)
                    self._ready.append(pair)
            for expired in decided.expired:
                self._expire(expired)
            if decided.next_check is not None:
                at = mono + max(0.0, decided.next_check - self._clock.time())
                for key in decided.waiting:
                    heapq.heappush(self._deadlines, (at, key))
        while self._leftovers and self._pool.has_room():
            self._pool.offer(self._leftovers.popleft())
        while self._ready and self._pool.has_room():
            pair = self._ready.popleft()
            self._ready_set.discard(pair)
            self._claim(pair)

    # -- helpers -------------------------------------------------------------------------

    def _take_hint(self, path: str | None) -> None:
        if path is None:
            return
        try:
            rel = PurePosixPath(Path(path).relative_to(self._root).as_posix())
        except ValueError:
            return
        if rel == PurePosixPath(".") or self._ignored(rel):
            return
        try:
            st = os.lstat(self._root / rel)
        except OSError:
            self._forget(rel)
            return
        if stat.S_ISDIR(st.st_mode):
            if self._opts.recursive:  # a new folder: its files may predate our watch on it
                now = self._clock.time()
                for sub, sub_st in self._walk(self._root / rel):
                    self._observe(sub, sub_st, now)
            return
        if len(rel.parts) > 1 and not self._opts.recursive:
            return
        self._observe(rel, st, self._clock.time())

    def _walk(self, folder: Path) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
        """Files under ``folder`` with their lstat, streamed (a 100,000-file inbox is never listed whole)."""
        base = PurePosixPath(Path(folder).relative_to(self._root).as_posix())
        subfolders: list[Path] = []
        try:
            with os.scandir(folder) as it:
                for item in it:
                    if self._ignore(item.name):
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        subfolders.append(Path(item.path))
                        continue
                    yield base / item.name, st
        except OSError as exc:
            self._log.warning("scan.unreadable", folder=str(folder), error=str(exc))
            return
        if self._opts.recursive:
            for sub in subfolders:
                yield from self._walk(sub)

    def _ignored(self, rel: PurePosixPath) -> bool:
        return any(self._ignore(part) for part in rel.parts)

    def _observe(self, rel: PurePosixPath, st: os.stat_result, now: float) -> None:
        before = self._entries.get(rel)
        entry = pairing.observe(before, rel, st.st_size, st.st_mtime_ns, now)
        if entry is before:
            return
        self._entries[rel] = entry
        key = pairing.group_key(rel)
        members = self._groups.setdefault(key, [])
        if rel not in members:
            members.append(rel)
        self._dirty.add(key)

    def _forget(self, rel: PurePosixPath) -> None:
        if self._entries.pop(rel, None) is None:
            return
        key = pairing.group_key(rel)
        members = self._groups.get(key)
        if members is not None:
            if rel in members:
                members.remove(rel)
            if not members:
                del self._groups[key]
        self._dirty.add(key)

    def _unchanged(self, rels: Iterable[PurePosixPath]) -> bool:
        """Look once more just before claiming: events can be late, polling can miss a write."""
        now = self._clock.time()
        same = True
        for rel in rels:
            try:
                st = os.lstat(self._root / rel)
            except OSError:
                self._forget(rel)
                return False
            before = self._entries.get(rel)
            self._observe(rel, st, now)
            same = same and self._entries.get(rel) is before
        return same

    def _claim(self, pair: Pair) -> None:
        rels = [p for p in (pair.audio, pair.sidecar) if p is not None]
        if not self._unchanged(rels):
            return
        claimed = self._folders.claim(pair)
        for rel in rels:
            self._forget(rel)
        if claimed is None:
            self._log.debug("claim.lost", file=str(pair.audio))
            return
        self._pool.offer(claimed)  # has_room() was checked, and only this thread offers

    def _expire(self, expired: pairing.Expired) -> None:
        first = expired.files[0]
        error = error_document(
            first.name, None, pairing.classify(first.name)[1], expired.problem, self._clock
        )
        try:
            self._folders.fail_in_place(self._root, expired.files, error)
        except OSError as exc:
            self._log.error("files.move_failed", file=str(first), error=str(exc))
            return
        for rel in expired.files:
            self._forget(rel)
        self._log.warning("upload.failed", file=str(first), reason=expired.problem.code, message=expired.problem.message)
