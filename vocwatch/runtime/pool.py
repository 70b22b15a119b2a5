"""The bounded worker pool: ``workers`` uploads at once, a bounded queue in front of them.

Each worker reports what it does (idle, working, waiting on the gate, sending) and since when, so the
watchdog can tell a slow upload whose bytes still move from a stuck one (core/health.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from vocwatch.core.health import Worker, WorkerState
from vocwatch.core.model import Accepted, AuthProblem, Clock, End, Rejected, Retry, Unsettled
from vocwatch.edges.folders import Claimed
from vocwatch.edges.ledger import StaleRowError
from vocwatch.edges.ledgers import LedgerUnavailableError
from vocwatch.runtime.errors import outcome_line
from vocwatch.runtime.gate import Gate
from vocwatch.runtime.pipeline import Pipeline, Prepared
from vocwatch.runtime.slots import Slots
from vocwatch.runtime.window import UploadWindow

_STOP = object()


@dataclass(slots=True)
class _Activity:
    """What one worker does now; guarded by the pool's lock."""

    state: WorkerState
    since: float
    file: str | None = None
    recording_id: str | None = None
    fd: int | None = None  # a dup of the file being sent: it shares the offset httpx reads at
    offset: int = 0


class Pool:
    def __init__(
        self,
        pipeline: Pipeline,
        gate: Gate,
        *,
        workers: int,
        capacity: int,
        clock: Clock,
        give_up_after_s: float | None = None,
        on_idle: Callable[[], None] = lambda: None,
        on_done: Callable[[Claimed, End], None] = lambda c, s: None,
        window: UploadWindow | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.name = "pool"
        self.slots = slots  # upload.workers = "auto": at most slots.limit of the workers take pairs
        self.window = window  # upload.window: outside it nothing new is taken, and no attempt starts
        self._pipeline = pipeline
        self._gate = gate
        self._clock = clock
        self._give_up = give_up_after_s
        # Unbounded underneath, bounded by offer(): cancel() must never wait for room to post its stops.
        self._queue: queue.Queue[Any] = queue.Queue()
        self._capacity = capacity
        self.on_idle = on_idle
        self.on_done = on_done
        # Joined by join(); daemon threads only so that one abandoned past the shutdown deadline (a stuck
        # upload) cannot hold the process after it said daemon.stopped.
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"upload-{i}", daemon=True) for i in range(workers)
        ]
        self._lock = threading.Lock()
        self._activity = [_Activity(WorkerState.IDLE, clock.monotonic()) for _ in range(workers)]
        self._queue_moved = clock.monotonic()
        self._in_flight: set[str] = set()  # every path of every pair queued or being worked on
        self._mtimes: dict[str, float] = {}  # each queued or worked-on recording's mtime (oldest pending gauge)
        self._count = 0
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._log = structlog.get_logger("vocwatch.runtime.pool")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def offer(self, claimed: Claimed) -> bool:
        """Queue a claimed pair if there is room; never blocks."""
        if self._stopping.is_set():
            return False
        paths = [str(p) for p in claimed.paths()]
        try:
            mtime = os.lstat(claimed.audio).st_mtime
        except OSError:
            mtime = None
        # Registered before it is queued: a worker may finish it before put_nowait returns.
        with self._lock:
            self._in_flight.update(paths)
            if mtime is not None:
                self._mtimes[str(claimed.audio)] = mtime
            self._count += 1
        if self._queue.qsize() >= self._capacity:
            self._forget(claimed)
            return False
        self._queue.put_nowait(claimed)
        if self._queue.qsize() == 1:  # the queue was empty: it starts waiting for a worker now
            with self._lock:
                self._queue_moved = self._clock.monotonic()
        return True

    def has_room(self) -> bool:
        """May the planner claim one more pair now? Not while full, stopping, or outside the upload window."""
        if self.window is not None and not self.window.is_open():
            return False
        return not self._stopping.is_set() and self._queue.qsize() < self._capacity

    def holds(self, path: str) -> bool:
        """Is the file at ``path`` (in work/) queued or being worked on?"""
        with self._lock:
            return path in self._in_flight

    def owns(self, claimed: Claimed) -> bool:
        with self._lock:
            return any(str(p) in self._in_flight for p in claimed.paths())

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._count - self._queue.qsize()

    def oldest_mtime(self) -> float | None:
        """The mtime of the oldest recording queued or being worked on (not yet delivered)."""
        with self._lock:
            return min(self._mtimes.values(), default=None)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout)

    def observe(self) -> tuple[tuple[Worker, ...], int, float]:
        """Each worker's state (a sending one's ``since`` moves with its bytes), queue depth, queue moved."""
        now = self._clock.monotonic()
        with self._lock:
            for act in self._activity:
                if act.fd is not None:
                    with contextlib.suppress(OSError):
                        offset = os.lseek(act.fd, 0, os.SEEK_CUR)
                        if offset != act.offset:
                            act.offset, act.since = offset, now
            workers = tuple(
                Worker(thread.is_alive(), act.state, act.since, act.file)
                for thread, act in zip(self._threads, self._activity, strict=True)
            )
            return workers, self._queue.qsize(), self._queue_moved

    def in_flight(self) -> list[dict[str, str | None]]:
        """The pairs workers hold right now: file, recording id (once known) and what the worker does."""
        with self._lock:
            return [
                {"file": a.file, "recording_id": a.recording_id, "state": a.state}
                for a in self._activity
                if a.state not in (WorkerState.IDLE, WorkerState.PARKED)
            ]

    def stop(self, grace_s: float) -> int:
        """cancel(), then join() for ``grace_s``; returns how many workers were still busy at its end."""
        self.cancel()
        self.join(self._clock.monotonic() + grace_s)
        return self.alive

    def cancel(self) -> int:
        """Stop taking work, put queued pairs back where they came from (how many); never waits on a worker.

        A worker finishes the attempt it is in; one that has not started sending releases its pair.
        """
        if self._stopping.is_set():
            return 0
        put_back = 0
        self._stopping.set()
        if self.slots is not None:
            self.slots.stop()  # the workers parked beyond the limit end at once
        self._gate.stop()
        self._pipeline.stop()  # a worker waiting for another process's recording stops waiting
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                try:
                    # A leftover stays in work/, where the next start takes it again: its row may be accepted
                    # (the job id durable, the files not yet moved), and back in the inbox it would be sent
                    # again as a duplicate of itself while recovery marked the row done at a missing file.
                    if not item.leftover:
                        self._pipeline.folders.release(item)
                        put_back += 1
                except OSError as exc:  # never escape a shutdown: the pair stays in work/ for the next start
                    self._log.error(
                        "files.move_failed",
                        file=str(item.pair.audio),
                        error=f"{exc.strerror or exc} ({exc.filename or item.root})",
                        fix="the pair stays in work/ and is recovered at the next start",
                    )
                self._forget(item)
        for _ in self._threads:
            self._queue.put_nowait(_STOP)
        return put_back

    def join(self, deadline: float) -> bool:
        """Wait until every worker has ended or ``deadline`` (clock.monotonic) passed; True if all ended."""
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=max(0.0, deadline - self._clock.monotonic()))
        return self.alive == 0

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _forget(self, claimed: Claimed) -> None:
        with self._lock:
            self._in_flight.difference_update(str(p) for p in claimed.paths())
            self._mtimes.pop(str(claimed.audio), None)
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def _mark(self, i: int, state: WorkerState, prepared: Prepared | None = None) -> None:
        with self._lock:
            act = self._activity[i]
            if act.fd is not None:
                os.close(act.fd)
                act.fd = None
            act.state, act.since = state, self._clock.monotonic()
            if state == WorkerState.IDLE:
                act.file = act.recording_id = None
            if prepared is not None:
                act.recording_id = prepared.row.recording_id
                if state == WorkerState.SENDING:
                    act.fd = os.dup(prepared.fh.fileno())
                    act.offset = os.lseek(act.fd, 0, os.SEEK_CUR)

    def _work(self, i: int) -> None:
        while True:
            if self.slots is not None:
                self._mark(i, WorkerState.PARKED)
                if not self.slots.acquire():
                    return
            try:
                if not self._take(i):
                    return
            finally:
                if self.slots is not None:
                    self.slots.release()

    def _take(self, i: int) -> bool:
        """Take one pair from the queue and journey it; False at the stop sign."""
        self._mark(i, WorkerState.IDLE)
        item = self._queue.get()
        if item is _STOP:
            return False
        with self._lock:
            self._queue_moved = self._clock.monotonic()
            self._activity[i].file = str(item.pair.audio)
        self._mark(i, WorkerState.WORKING)
        state: End = End.ERROR
        try:
            state = self._journey(i, item)
        except OSError as exc:  # a full disk or lost permissions: nothing moved that was not safe
            if exc.errno == errno.ENAMETOOLONG:  # permanent: retrying meets the same name
                try:
                    state = self._pipeline.fail_name_too_long(item, exc)
                except OSError as again:
                    exc = again
            if state == End.ERROR:
                self._log.error(
                    "files.move_failed",
                    file=str(item.pair.audio),
                    error=f"{exc.strerror or exc} ({exc.filename or item.root})",
                    fix="free space or fix permissions; the pair stays in work/ and is retried at the next rescan",
                )
        except (StaleRowError, LedgerUnavailableError) as exc:
            # Its row moved under us: a peer took it over (with its files, in the fleet), or the database
            # went away at shutdown. Nothing is sent; what is left in work/ is decided again at a rescan.
            self._log.info("claim.let_go", file=str(item.pair.audio), reason=str(exc))
            state = End.RELEASED
        except Exception:  # a bug must not kill the worker; the pair stays in work/ for recovery
            self._log.exception("worker.error", file=str(item.pair.audio))
        finally:
            self._forget(item)
            self.on_done(item, state)
            self.on_idle()
        return True

    def _journey(self, i: int, claimed: Claimed) -> End:
        prepared = self._pipeline.prepare(claimed)
        if not isinstance(prepared, Prepared):
            return prepared
        try:
            return self._attempts(i, prepared)
        finally:
            self._mark(i, WorkerState.WORKING)
            self._pipeline.done_with(prepared)

    def _attempts(self, i: int, prepared: Prepared) -> End:
        first_failure: float | None = None
        while True:
            self._mark(i, WorkerState.WAITING, prepared)
            if self.window is not None and not self.window.wait_open(self._stopping):
                self._mark(i, WorkerState.WORKING)
                self._pipeline.release(prepared, "shutting down")
                return End.RELEASED
            if self._stopping.is_set() or not self._gate.acquire():
                self._mark(i, WorkerState.WORKING)
                self._pipeline.release(prepared, "shutting down")
                return End.RELEASED
            self._mark(i, WorkerState.SENDING, prepared)
            try:
                outcome = self._pipeline.attempt(prepared)
            except BaseException:
                self._gate.release()  # a probe that raised must not keep every other worker waiting
                raise
            if self.slots is not None and prepared.reply_wait_s is not None:
                self.slots.observe(prepared.reply_wait_s, outcome.status if isinstance(outcome, Retry) else None)
            self._mark(i, WorkerState.WORKING)
            newly_paused = self._gate.report(outcome)
            if isinstance(outcome, AuthProblem):
                if newly_paused:
                    self._log.error(
                        "upload.auth_paused",
                        status=outcome.status,
                        message=outcome.message,
                        fix="check the API key (api.api_key_file, VOCWATCH_API_KEY or CRESCENDO_API_KEY), "
                        "api.tenant_id and api.base_url; uploads resume by themselves once it works",
                    )
                continue  # a refused key is the configuration's fault: it never counts towards giving up
            if isinstance(outcome, Accepted):
                return End.ACCEPTED
            if isinstance(outcome, Rejected):
                return End.REJECTED
            if isinstance(outcome, Unsettled):
                return End.UNSETTLED
            prepared.log.info("upload.retry", reason=outcome.reason, retry_after=outcome.after)
            now = self._clock.monotonic()
            first_failure = now if first_failure is None else first_failure
            if self._give_up is not None and now - first_failure >= self._give_up:
                self._pipeline.give_up(prepared, now - first_failure, outcome_line(outcome))
                return End.FAILED
