"""The planner thread: owns what is known of the inbox, decides with pairing.plan, claims, queues.

Watchdog events and worker completions are only hints that make it look sooner; the directory
scan (at start and every ``rescan_seconds``) is the truth.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import queue
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, cast

import structlog

from vocwatch.core import pairing
from vocwatch.core.audio import Incomplete, Seen
from vocwatch.core.model import Clock, Pair
from vocwatch.core.pairing import Key, Rules, printable
from vocwatch.edges.audio import structure_seen
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.inbox import MAX_DEPTH, Inbox, folder_depth
from vocwatch.edges.ledgers import LedgerStore
from vocwatch.edges.validate import open_for_writing
from vocwatch.runtime.order import Order, ReadyQueue
from vocwatch.runtime.pool import Pool
from vocwatch.runtime.unpaired import fail_unpaired

# What the watcher reports (see watcher.py): created, opened, modified, closed, closed_no_write,
# moved (with its source), deleted, folder_gone, changed; rescan (look at everything again); and
# watching ("events" or "poll:<interval>") or not_watching, so that lost events can be told apart.
Hint = tuple[str, str, str | None]
# A file that a rescan finds, that no event announced though it is older than this, means events
# were lost (for polling: twice the interval, plus time to take the snapshot).
UNANNOUNCED_AGE_S = 1.0
CLAIM_RETRY_S = 1.0
# A recording whose structure says it is incomplete is looked at again this often (at least), while unchanged.
INCOMPLETE_RECHECK_S = 1.0
# Pair groups planned at a time: a 100,000-pair first scan is not planned (and held) all at once,
# and the pool is fed between slices, so the first claim need not wait for the whole plan.
PLAN_SLICE = 2000
# A ready pair: its recording and its sidecar (or None), relative to the inbox.
Ready = tuple[str, str | None]
# inotify's events about a file's handles (pairing.py, rule 3b); the polling observer's "modified" is not one.
HANDLE_EVENTS: frozenset[str] = frozenset({"opened", "modified", "closed", "closed_no_write"})
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
    order: Order = "arrival"  # upload.order: "oldest" hands out ready pairs by the recording's mtime
    incomplete_timeout_s: float = 600.0  # watch.incomplete_timeout_seconds


class Planner:
    def __init__(
        self,
        *,
        folders: Folders,
        ledger: LedgerStore,
        pool: Pool,
        clock: Clock,
        options: ScanOptions,
        log: Any = None,
        on_failed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._folders = folders
        self._ledger = ledger
        self._on_failed = on_failed  # the failures metric, by reason
        self._pool = pool
        self._clock = clock
        self._opts = options
        self._root = folders.inbox
        self._log = log or structlog.get_logger("vocwatch.runtime.planner")
        self._inbox = Inbox(folders.inbox, ignore=options.ignore, recursive=options.recursive, log=self._log)
        self._hints: queue.SimpleQueue[Hint | None] = queue.SimpleQueue()
        self._deadlines: list[tuple[float, Key]] = []
        self._scheduled: dict[Key, float] = {}
        self._ready = ReadyQueue(options.order)
        self._leftovers: deque[Claimed] = deque()
        self._rescan_requested = False
        self._scanned: set[str] = set()
        self._announce_within: float | None = None  # None: no watcher runs, only rescans find files
        self._handle_events = False  # inotify reports opens and closes (not polling, not unwatched)
        self._stop = threading.Event()
        self._incomplete_seen: dict[str, float] = {}  # recording -> stable_since of its last claim.incomplete
        self._seen: Seen | None = None  # the structural verdict of the pair being claimed (_incomplete)
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
        return len(self._inbox.entries)

    def oldest_ready_mtime(self) -> float | None:
        """The mtime (epoch seconds) of the oldest complete pair not yet claimed; None when there is none."""
        ns = self._ready.oldest_mtime_ns()
        return None if ns is None else ns / 1e9

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
        self._scanned = set()  # folders scanned for this batch of hints: each at most once
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
        known = self._inbox.entries
        # What was known and is not seen again is gone; on a first scan nothing was (no 200,000-name set).
        seen: set[str] | None = set() if known else None
        unannounced = 0
        for rel, st in self._inbox.walk():
            if seen is not None:
                seen.add(rel)
            within = self._announce_within
            if periodic and within is not None and rel not in known and wall - st.st_ctime > within:
                unannounced += 1
            self._inbox.observe(rel, st, now)
        if seen is not None:
            for rel in [r for r in known if r not in seen]:
                self._inbox.forget(rel)
        for claimed, _whole in self._folders.claims_in_work(self._opts.rules.require_sidecar):
            if self._pool.owns(claimed) or any(c.audio == claimed.audio for c in self._leftovers):
                continue
            # Whole or not, the pipeline decides from the ledger: a lone recording may be half-way to
            # done/ (its sidecar is there already), and only its row can tell.
            self._leftovers.append(claimed)
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
                self._inbox.dirty.add(key)
        # What changes while this runs (claims, expiries) is planned at the next step.
        keys = self._inbox.take_dirty()
        # Oldest first means all of a backlog is planned before the first claim; arrival order feeds between slices.
        interleave = self._ready.order == "arrival"
        for start in range(0, len(keys), PLAN_SLICE):
            self._plan(keys[start : start + PLAN_SLICE])
            if interleave:
                self._feed()
        if not keys or not interleave:
            self._feed()

    def _plan(self, keys: list[Key]) -> None:
        entries = [entry for key in keys for entry in self._inbox.members(key)]
        decided = pairing.decide(entries, self._clock.monotonic(), self._opts.rules)
        for pair in decided.ready:
            entry = self._inbox.entries.get(pair[0])
            self._ready.add(pair, entry.mtime_ns if entry is not None else 0)
        for expired in decided.expired:
            self._expire(expired)
        for key, at in decided.waiting.items():
            self._schedule(key, at)

    def _feed(self) -> None:
        while self._leftovers and self._pool.has_room():
            leftover = self._leftovers.popleft()
            # A worker may have finished it since the scan listed it.
            if not self._pool.owns(leftover) and self._folders.exists(leftover):
                self._log.info("claim.recovered", file=str(leftover.pair.audio))
                self._pool.offer(leftover)
        while self._ready and self._pool.has_room():
            self._claim(self._ready.pop())

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
            self._handle_events = event == "watching" and src == "events"
            return
        inbox = self._inbox
        src_rel = inbox.rel(src) if src is not None else None
        if src_rel is not None:
            inbox.vanished(src_rel, folder=event == "folder_gone")
        rel = inbox.rel(path)
        if rel is None:
            return
        if event in ("deleted", "folder_gone"):
            inbox.vanished(rel, folder=event == "folder_gone")
            return
        if rel == "." or inbox.ignored(rel):
            return
        if rel.count("/") > MAX_DEPTH:  # inside a folder that scans leave out (scan.too_deep)
            return
        try:
            st = os.lstat(inbox.path(rel))
        except OSError:
            inbox.vanished(rel, folder=False)
            return
        now = self._clock.monotonic()
        if stat.S_ISDIR(st.st_mode):
            # A new folder: its files may predate our watch on it. Only its own level: what is below it comes
            # with hints of its own (watchdog reports the content of a new or moved-in folder, a poll reports
            # every new file), so a hint per level of a deep tree must not walk the whole tree below it.
            if not self._opts.recursive or rel in self._scanned:
                return
            if folder_depth(rel) > MAX_DEPTH:
                inbox.too_deep(rel)
                return
            self._scanned.add(rel)
            for sub, sub_st in inbox.walk(rel, deep=False):
                inbox.observe(sub, sub_st, now)
            return
        if "/" in rel and not self._opts.recursive:
            return
        if event == "moved" and src_rel is not None and inbox.ignored(src_rel):
            inbox.observe(rel, st, now, complete_at=now, renamed=True)  # rule 2
        else:
            inbox.observe(rel, st, now)
        if self._handle_events and event in HANDLE_EVENTS:
            inbox.handle_event(rel, cast(pairing.HandleEvent, event))  # rule 3b

    def _schedule(self, key: Key, at: float) -> None:
        if key not in self._scheduled or at < self._scheduled[key]:
            self._scheduled[key] = at
            heapq.heappush(self._deadlines, (at, key))

    # -- acting --------------------------------------------------------------------------

    def _unchanged(self, rels: Iterable[str]) -> bool:
        """Look once more just before claiming: events can be late, polling can miss a write."""
        now = self._clock.monotonic()
        inbox = self._inbox
        same = True
        for rel in rels:
            try:
                st = os.lstat(inbox.path(rel))
            except OSError:
                inbox.forget(rel)
                return False
            before = inbox.entries.get(rel)
            inbox.observe(rel, st, now)
            same = same and inbox.entries.get(rel) is before
        return same

    def _held_open(self, rels: Iterable[str]) -> bool:
        """Does a writer still hold one of these files open (pairing.py, rule 3)? The kernel's read lease
        decides where it answers; otherwise what inotify told; with neither, only the settle wait."""
        now = self._clock.monotonic()
        for rel in rels:
            entry = self._inbox.entries[rel]
            writing = open_for_writing(self._root / rel)
            held = writing if writing is not None else entry.held_by_events
            if held:
                self._inbox.hold(rel, now + pairing.HELD_RECHECK_S)
                # Once per hold at info (a recorder holds its file for the whole call), then at debug.
                log = self._log.debug if entry.held_until is not None else self._log.info
                log("claim.deferred", file=printable(rel), held_open=True, by="lease" if writing else "events")
                return True
            if writing is False and (entry.held_by_events or entry.held_until is not None):
                self._inbox.hold(rel, None)  # the kernel's word outweighs merged or missed events
        return False

    def _incomplete(self, audio: str) -> bool:
        """The structural guard (README, completeness rules): a settled recording whose own headers say bytes
        are missing is not claimed, but looked at again; once unchanged for incomplete_timeout_s it is claimed,
        and the pipeline fails it as truncated (or sends it, watch.truncated = "upload")."""
        entry = self._inbox.entries.get(audio)
        seen = structure_seen(self._root / audio) if entry is not None else None
        self._seen = seen if isinstance(seen, Seen) else None
        verdict = seen.verdict if isinstance(seen, Seen) else None
        if not isinstance(verdict, Incomplete) or entry is None:
            self._incomplete_seen.pop(audio, None)
            return False  # complete, or the structure cannot tell (the settle rule decides), or no safe open
        now = self._clock.monotonic()
        deadline = entry.stable_since + self._opts.incomplete_timeout_s
        facts = {"present": verdict.present, "declared": verdict.declared, "cut_offset": verdict.cut_offset}
        if now >= deadline:
            self._incomplete_seen.pop(audio, None)
            self._log.warning("claim.truncated", file=printable(audio), why=verdict.why, **facts)
            return False
        if self._incomplete_seen.get(audio) != entry.stable_since:
            if len(self._incomplete_seen) > 10_000:  # files deleted while waiting: forget them now and then
                self._incomplete_seen = {k: v for k, v in self._incomplete_seen.items() if k in self._inbox.entries}
            self._incomplete_seen[audio] = entry.stable_since
            self._log.info("claim.incomplete", file=printable(audio), why=verdict.why, **facts)
        recheck = now + max(self._opts.rules.settle_s, INCOMPLETE_RECHECK_S)
        self._schedule(pairing.group_key(audio), min(recheck, deadline))
        return True

    def _claim(self, ready: Ready) -> None:
        audio, sidecar = ready
        rels = [audio] if sidecar is None else [audio, sidecar]
        if not self._unchanged(rels) or self._held_open(rels):
            return
        now = self._clock.monotonic()
        if any(self._inbox.entries[rel].settled_at(self._opts.rules) > now for rel in rels):
            return  # changed since it was found ready: the re-plan decides again
        self._seen = None
        if self._incomplete(audio):
            return
        seen = self._seen  # the verdict just made: the worker takes it instead of checking again
        key = pairing.group_key(audio)
        pair = Pair(PurePosixPath(audio), PurePosixPath(sidecar) if sidecar is not None else None)
        try:
            claimed = self._folders.claim(pair)
        except OSError as exc:
            self._log.error(
                "claim.failed",
                file=printable(audio),
                error=str(exc),
                fix="check that vocwatch may rename files in the inbox and work folders",
            )
            self._schedule(key, self._clock.monotonic() + self._opts.rescan_s)
            return
        if claimed is None:
            gone = [rel for rel in rels if not os.path.lexists(self._inbox.path(rel))]
            if not gone:
                # A pair of the same name is still in work/: take this one once it has moved on.
                self._schedule(key, self._clock.monotonic() + CLAIM_RETRY_S)
                return
            self._log.debug("claim.lost", file=printable(audio))
            for rel in gone:
                self._inbox.forget(rel)  # what is left waits for a new partner
            return
        if self._written_while_claimed(claimed, rels):
            return
        if seen is not None:
            claimed = dataclasses.replace(claimed, seen=seen)
        for rel in rels:
            self._inbox.forget(rel)
        self._pool.offer(claimed)  # has_room() was checked, and only this thread offers

    def _written_while_claimed(self, claimed: Claimed, rels: list[str]) -> bool:
        """A write between the last look and the rename: put the pair back at once, to settle again.
        (After this, the pipeline watches its own descriptor: signature and lease.)"""
        for rel, path in zip(rels, claimed.paths(), strict=True):
            entry = self._inbox.entries[rel]
            try:
                st = os.lstat(path)
            except OSError:
                return False  # the pipeline will find it gone
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (entry.size, entry.mtime_ns, entry.ino):
                break
        else:
            return False
        self._log.info("claim.returned", file=printable(rels[0]), reason="written while it was claimed")
        try:
            self._folders.release(claimed)
        except OSError as exc:  # left in work/: the next rescan's recovery puts it back
            self._log.error("files.move_failed", file=printable(rels[0]), error=str(exc))
        for rel in rels:
            self._inbox.forget(rel)  # its return is a new file to the inbox: it settles again
        return True

    def _expire(self, expired: pairing.Expired) -> None:
        first = expired.files[0]
        rels = [str(rel) for rel in expired.files]
        try:
            problem = fail_unpaired(self._folders, self._ledger, self._root, expired, self._clock, self._log)
        except OSError as exc:
            self._log.error("files.move_failed", file=printable(str(first)), error=str(exc))
            self._schedule(pairing.group_key(first), self._clock.monotonic() + self._opts.rescan_s)
            return
        for rel in rels:  # gone meanwhile or failed: either way nothing of it is left to pair
            self._inbox.forget(rel)
        if problem is None:
            return
        self._on_failed(problem.code)
        self._log.warning("upload.failed", file=printable(str(first)), reason=problem.code, message=problem.message)
