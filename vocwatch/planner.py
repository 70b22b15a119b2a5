"""The planner thread: owns what is known of the inbox, decides with pairing.plan, claims, queues.

Watchdog events and worker completions are only hints that make it look sooner; the directory
scan (at start and every ``rescan_seconds``) is the truth.
"""

from __future__ import annotations

import heapq
import os
import queue
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
from vocwatch.pairing import Entry, Key, Rules, printable
from vocwatch.pipeline import error_document
from vocwatch.pool import Pool
from vocwatch.validate import open_for_writing

# What the watcher reports (see watcher.py): created, opened, closed, closed_no_write, moved
# (with its source), deleted, folder_gone, changed; rescan (look at everything again); and
# watching ("events" or "poll:<interval>") or not_watching, so that lost events can be told apart.
Hint = tuple[str, str, str | None]
# A file that a rescan finds, that no event announced though it is older than this, means events
# were lost (for polling: twice the interval, plus time to take the snapshot).
UNANNOUNCED_AGE_S = 1.0
CLAIM_RETRY_S = 1.0
EVENTS_LOST_FIX = (
    "events were lost (inotify queue overflow or watch limit, or a network filesystem); the rescan "
    "took these files. Raise fs.inotify.max_user_watches / max_queued_events (sysctl), or set "
    'watch.mode = "poll" for network shares'
)


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
        self._hints: queue.SimpleQueue[Hint | None] = queue.SimpleQueue()
        self._entries: dict[PurePosixPath, Entry] = {}
        self._groups: dict[Key, set[PurePosixPath]] = {}
        self._dirty: set[Key] = set()
        self._deadlines: list[tuple[float, Key]] = []
        self._scheduled: dict[Key, float] = {}
        self._ready: deque[Pair] = deque()
        self._ready_set: set[Pair] = set()
        self._leftovers: deque[Claimed] = deque()
        self._unreadable: set[str] = set()
        self._rescan_requested = False
        self._announce_within: float | None = None  # None: no watcher runs, only rescans find files
        self._stop = threading.Event()
        self._log = log or structlog.get_logger("vocwatch.planner")
        self.scans = 0
        self.unannounced = 0
        self.last_progress = clock.monotonic()

    # -- called from other threads ---------------------------------------------------------

    def hint(self, path: str | None = None, event: str = "changed", src: str | None = None) -> None:
        """Something may have changed at ``path`` (None: just look again). Never blocks."""
        self._hints.put(None if path is None else (path, event, src))

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
            try:
                now = self._clock.monotonic()
                if now >= next_scan or self._rescan_requested:
                    self.rescan(periodic=not self._rescan_requested and self.scans > 0)
                    next_scan = now + self._opts.rescan_s
                self.step()
                self.last_progress = self._clock.monotonic()
                self._wait_for_hints(next_scan)
            except Exception:
                # A bug or an odd filesystem must not stop ingestion; a stall shows in the health check.
                self._log.exception("planner.error")
                self._stop.wait(1.0)

    def _wait_for_hints(self, next_scan: float) -> None:
        due = min(next_scan, self._deadlines[0][0]) if self._deadlines else next_scan
        try:
            first = self._hints.get(timeout=max(0.0, min(due - self._clock.monotonic(), 1.0)))
        except queue.Empty:
            return
        self._take_hint(first)
        while True:
            try:
                self._take_hint(self._hints.get_nowait())
            except queue.Empty:
                return

    def rescan(self, *, periodic: bool = False) -> None:
        """Walk the inbox (the truth), and pick up pairs left in work/ that no worker holds."""
        self._rescan_requested = False
        now = self._clock.monotonic()
        wall = self._clock.time()
        seen: set[PurePosixPath] = set()
        unannounced = 0
        for rel, st in self._walk(self._root):
            seen.add(rel)
            within = self._announce_within
            if periodic and within is not None and rel not in self._entries and wall - st.st_ctime > within:
                unannounced += 1
            self._observe(rel, st, now)
        for rel in [r for r in self._entries if r not in seen]:
            self._forget(rel)
        for claimed, whole in self._folders.claims_in_work(self._opts.rules.require_sidecar):
            if self._pool.owns(claimed) or any(c.audio == claimed.audio for c in self._leftovers):
                continue
            if whole:
                self._leftovers.append(claimed)
            else:
                self._log.info("claim.half_returned", file=str(claimed.pair.audio))
                self._folders.release(claimed)
        self.scans += 1
        if unannounced:
            self.unannounced += unannounced
            self._log.warning("scan.unannounced_files", files=unannounced, fix=EVENTS_LOST_FIX)

    def step(self) -> None:
        """Plan the groups that changed or fell due, then feed the pool while it has room."""
        now = self._clock.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            at, key = heapq.heappop(self._deadlines)
            if self._scheduled.get(key) == at:
                del self._scheduled[key]
                self._dirty.add(key)
        if self._dirty:
            keys, self._dirty = self._dirty, set()
            entries = [self._entries[r] for key in keys for r in self._groups.get(key, ())]
            decided = pairing.plan(entries, now, self._opts.rules)
            for pair in decided.ready:
                if pair not in self._ready_set:
                    self._ready_set.add(pair)
                    self._ready.append(pair)
            for expired in decided.expired:
                self._expire(expired)
            for key, at in decided.waiting.items():
                self._schedule(key, at)
        while self._leftovers and self._pool.has_room():
            leftover = self._leftovers.popleft()
            # A worker may have finished it since the scan listed it.
            if not self._pool.owns(leftover) and self._folders.exists(leftover):
                self._log.info("claim.recovered", file=str(leftover.pair.audio))
                self._pool.offer(leftover)
        while self._ready and self._pool.has_room():
            pair = self._ready.popleft()
            self._ready_set.discard(pair)
            self._claim(pair)

    # -- hints ---------------------------------------------------------------------------

    def _take_hint(self, hint: Hint | None) -> None:
        if hint is None:
            return
        path, event, src = hint
        if event == "rescan":
            self._rescan_requested = True
            return
        if event in ("watching", "not_watching"):
            interval = float(src[5:]) if src is not None and src.startswith("poll:") else 0.0
            self._announce_within = None if event == "not_watching" else max(UNANNOUNCED_AGE_S, 2 * interval + 1)
            return
        src_rel = self._rel(src) if src is not None else None
        if src_rel is not None:
            self._vanished(src_rel, folder=event == "folder_gone")
        rel = self._rel(path)
        if rel is None:
            return
        if event in ("deleted", "folder_gone"):
            self._vanished(rel, folder=event == "folder_gone")
            return
        if rel == PurePosixPath(".") or self._ignored(rel):
            return
        try:
            st = os.lstat(self._root / rel)
        except OSError:
            self._vanished(rel, folder=False)
            return
        now = self._clock.monotonic()
        if stat.S_ISDIR(st.st_mode):
            if self._opts.recursive:  # a new folder: its files may predate our watch on it
                for sub, sub_st in self._walk(self._root / rel):
                    self._observe(sub, sub_st, now)
            return
        if len(rel.parts) > 1 and not self._opts.recursive:
            return
        if event == "opened":  # a reopen voids an earlier close (pairing.py, rule 3)
            entry = self._entries.get(rel)
            if entry is not None and entry.complete_at is not None:
                self._entries[rel] = pairing.reopened(entry)
                self._dirty.add(pairing.group_key(rel))
            return
        if event == "moved" and src_rel is not None and self._ignored(src_rel):
            self._observe(rel, st, now, complete_at=now, renamed=True)  # rule 2
        elif event == "closed":
            self._observe(rel, st, now, complete_at=now + self._opts.rules.close_grace_s)  # rule 3
        else:
            self._observe(rel, st, now)

    def _rel(self, path: str) -> PurePosixPath | None:
        try:
            return PurePosixPath(Path(path).relative_to(self._root).as_posix())
        except ValueError:
            return None

    def _ignored(self, rel: PurePosixPath) -> bool:
        return any(pairing.is_ignored(part, self._opts.ignore) for part in rel.parts)

    # -- what is known -------------------------------------------------------------------

    def _walk(self, folder: Path) -> Iterator[tuple[PurePosixPath, os.stat_result]]:
        """Every file below ``folder`` (not following links), without recursion: trees can be deep."""
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    items = list(it)
            except OSError as exc:
                if str(current) not in self._unreadable:  # once per outage, not at every rescan
                    self._unreadable.add(str(current))
                    self._log.warning("scan.unreadable", folder=printable(str(current)), error=str(exc))
                continue
            self._unreadable.discard(str(current))
            for item in items:
                rel = PurePosixPath(Path(item.path).relative_to(self._root).as_posix())
                if self._ignored(rel):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if self._opts.recursive:
                        stack.append(Path(item.path))
                    continue
                yield rel, st

    def _observe(
        self,
        rel: PurePosixPath,
        st: os.stat_result,
        now: float,
        complete_at: float | None = None,
        renamed: bool = False,
    ) -> None:
        before = self._entries.get(rel)
        entry = pairing.observe(
            before,
            rel,
            st.st_size,
            st.st_mtime_ns,
            now,
            ino=st.st_ino,
            ctime_ns=st.st_ctime_ns,
            complete_at=complete_at,
            renamed=renamed,
        )
        if entry is before:
            return
        self._entries[rel] = entry
        key = pairing.group_key(rel)
        self._groups.setdefault(key, set()).add(rel)
        self._dirty.add(key)

    def _forget(self, rel: PurePosixPath) -> None:
        if self._entries.pop(rel, None) is None:
            return
        key = pairing.group_key(rel)
        members = self._groups.get(key)
        if members is not None:
            members.discard(rel)
            if not members:
                del self._groups[key]
        self._dirty.add(key)

    def _vanished(self, rel: PurePosixPath, *, folder: bool) -> None:
        """A file, or with ``folder`` everything below a folder, is no longer in the inbox."""
        if not folder:
            self._forget(rel)
            return
        for r in [r for r in self._entries if rel in r.parents]:
            self._forget(r)

    def _schedule(self, key: Key, at: float) -> None:
        if key not in self._scheduled or at < self._scheduled[key]:
            self._scheduled[key] = at
            heapq.heappush(self._deadlines, (at, key))

    # -- acting --------------------------------------------------------------------------

    def _unchanged(self, rels: Iterable[PurePosixPath]) -> bool:
        """Look once more just before claiming: events can be late, polling can miss a write."""
        now = self._clock.monotonic()
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

    def _still_written(self, rels: Iterable[PurePosixPath]) -> bool:
        """For files taken before their settle wait: does a process still hold one open for writing?"""
        now = self._clock.monotonic()
        for rel in rels:
            entry = self._entries[rel]
            if not pairing.taken_early(entry, now, self._opts.rules):
                continue
            writing = open_for_writing(self._root / rel)
            if writing or (writing is None and not entry.renamed):  # pairing.py: a close alone proves nothing
                self._entries[rel] = pairing.reopened(entry)
                self._dirty.add(pairing.group_key(rel))
                self._log.debug("claim.deferred", file=printable(str(rel)), open_for_writing=writing)
                return True
        return False

    def _claim(self, pair: Pair) -> None:
        rels = [p for p in (pair.audio, pair.sidecar) if p is not None]
        if not self._unchanged(rels) or self._still_written(rels):
            return
        now = self._clock.monotonic()
        if any(self._entries[rel].settled_at(self._opts.rules) > now for rel in rels):
            return  # reopened since it was found ready: the re-plan decides again
        key = pairing.group_key(pair.audio)
        try:
            claimed = self._folders.claim(pair)
        except OSError as exc:
            self._log.error(
                "claim.failed",
                file=printable(str(pair.audio)),
                error=str(exc),
                fix="check that vocwatch may rename files in the inbox and work folders",
            )
            self._schedule(key, self._clock.monotonic() + self._opts.rescan_s)
            return
        if claimed is None:
            gone = [rel for rel in rels if not os.path.lexists(self._root / rel)]
            if not gone:
                # A pair of the same name is still in work/: take this one once it has moved on.
                self._schedule(key, self._clock.monotonic() + CLAIM_RETRY_S)
                return
            self._log.debug("claim.lost", file=printable(str(pair.audio)))
            for rel in gone:
                self._forget(rel)  # what is left waits for a new partner
            return
        for rel in rels:
            self._forget(rel)
        self._pool.offer(claimed)  # has_room() was checked, and only this thread offers

    def _expire(self, expired: pairing.Expired) -> None:
        first = expired.files[0]
        if not any(os.path.lexists(self._root / rel) for rel in expired.files):
            for rel in expired.files:  # gone meanwhile: nothing to fail, and no error file for nothing
                self._forget(rel)
            return
        error = error_document(first.name, None, pairing.classify(first.name)[1], expired.problem, self._clock)
        try:
            self._folders.fail_in_place(self._root, expired.files, error)
        except OSError as exc:
            self._log.error("files.move_failed", file=printable(str(first)), error=str(exc))
            self._schedule(pairing.group_key(first), self._clock.monotonic() + self._opts.rescan_s)
            return
        for rel in expired.files:
            self._forget(rel)
        self._log.warning(
            "upload.failed", file=printable(str(first)), reason=expired.problem.code, message=expired.problem.message
        )
