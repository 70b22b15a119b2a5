"""The bounded worker pool: ``workers`` uploads at once, a bounded queue in front of them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog

from vocwatch.core.model import AuthProblem, Clock, Retry
from vocwatch.edges.folders import Claimed
from vocwatch.runtime.gate import Gate
from vocwatch.runtime.pipeline import Pipeline, Prepared, _reason

_STOP = object()


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
        on_done: Callable[[Claimed, str], None] = lambda c, s: None,
    ) -> None:
        self._pipeline = pipeline
        self._gate = gate
        self._clock = clock
        self._give_up = give_up_after_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self.on_idle = on_idle
        self.on_done = on_done
        self._threads = [threading.Thread(target=self._work, name=f"upload-{i}", daemon=True) for i in range(workers)]
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # every path of every pair queued or being worked on
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
        # Registered before it is queued: a worker may finish it before put_nowait returns.
        with self._lock:
            self._in_flight.update(paths)
            self._count += 1
        try:
            self._queue.put_nowait(claimed)
        except queue.Full:
            self._forget(claimed)
            return False
        return True

    def has_room(self) -> bool:
        return not self._stopping.is_set() and not self._queue.full()

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

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout)

    def stop(self, grace_s: float) -> int:
        """Stop taking work, put queued pairs back (leftovers found in work/ stay there), let uploads in
        flight finish for ``grace_s``.

        Returns how many uploads were still in flight when the grace ran out.
        """
        self._stopping.set()
        self._gate.stop()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                # A leftover stays in work/, where the next start takes it again: its row may be accepted
                # (the job id durable, the files not yet moved), and back in the inbox it would be sent
                # again as a duplicate of itself while recovery marked the row done at a missing file.
                if not item.leftover:
                    self._pipeline.folders.release(item)
                self._forget(item)
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = self._clock.monotonic() + grace_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - self._clock.monotonic()))
        return sum(thread.is_alive() for thread in self._threads)

    def _forget(self, claimed: Claimed) -> None:
        with self._lock:
            self._in_flight.difference_update(str(p) for p in claimed.paths())
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            state = "error"
            try:
                state = self._journey(item)
            except OSError as exc:  # a full disk or lost permissions: nothing moved that was not safe
                self._log.error(
                    "files.move_failed",
                    file=str(item.pair.audio),
                    error=f"{exc.strerror or exc} ({exc.filename or item.root})",
                    fix="free space or fix permissions; the pair stays in work/ and is retried at the next rescan",
                )
            except Exception:  # a bug must not kill the worker; the pair stays in work/ for recovery
                self._log.exception("worker.error", file=str(item.pair.audio))
            finally:
                self._forget(item)
                self.on_done(item, state)
                self.on_idle()

    def _journey(self, claimed: Claimed) -> str:
        prepared = self._pipeline.prepare(claimed)
        if not isinstance(prepared, Prepared):
            return prepared
        try:
            return self._attempts(prepared)
        finally:
            self._pipeline.done_with(prepared)

    def _attempts(self, prepared: Prepared) -> str:
        first_failure: float | None = None
        while True:
            if self._stopping.is_set() or not self._gate.acquire():
                self._pipeline.release(prepared, "shutting down")
                return "released"
            try:
                outcome = self._pipeline.attempt(prepared)
            except BaseException:
                self._gate.release()  # a probe that raised must not keep every other worker waiting
                raise
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
            if not isinstance(outcome, Retry):
                return type(outcome).__name__.lower()
            prepared.log.info("upload.retry", reason=outcome.reason, retry_after=outcome.after)
            now = self._clock.monotonic()
            first_failure = now if first_failure is None else first_failure
            if self._give_up is not None and now - first_failure >= self._give_up:
                self._pipeline.give_up(prepared, now - first_failure, _reason(outcome))
                return "failed"
