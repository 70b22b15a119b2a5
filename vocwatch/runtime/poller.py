"""The status poller: follows every accepted job until ``completed`` or ``failed``, at growing intervals."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import structlog

from vocwatch.core.model import Clock, Pair, Problem, Rejected
from vocwatch.edges.client import JobStatus, StatusOutcome
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import Ledger, Row
from vocwatch.runtime.pipeline import error_document


class StatusSource(Protocol):
    def job_status(self, job_id: str) -> StatusOutcome: ...


class StatusPoller:
    def __init__(
        self,
        *,
        ledger: Ledger,
        client: StatusSource,
        clock: Clock,
        folders: Folders,
        initial_s: float,
        max_s: float,
        factor: float,
        move_on_completion: bool,
        on_status: Callable[[str], None] = lambda status: None,
        log: Any = None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._clock = clock
        self._folders = folders
        self._initial = initial_s
        self._max = max_s
        self._factor = factor
        self._move = move_on_completion
        self._on_status = on_status
        self._log = log or structlog.get_logger("vocwatch.runtime.poller")
        self._stop = threading.Event()
        self.last_progress = clock.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self.poll_due()
            self.last_progress = self._clock.monotonic()
            upcoming = self._ledger.next_poll_at()
            wait = 1.0 if upcoming is None else min(1.0, max(0.05, upcoming - self._clock.time()))
            self._stop.wait(wait)

    def poll_due(self) -> int:
        """Ask about every job whose next poll is due; return how many were asked."""
        rows = self._ledger.due_polls(self._clock.time())
        for row in rows:
            if self._stop.is_set():
                break
            try:
                self._poll(row)
            except Exception as exc:  # a full disk or a moved file must not end polling for every job
                self._log.error(
                    "job.poll_failed",
                    recording_id=row.recording_id,
                    job_id=row.job_id,
                    error=f"{type(exc).__name__}: {exc}",
                    fix="retried at the next poll interval",
                )
                self._ledger.update_job(row.id, next_poll_at=self._clock.time() + self._max)
        return len(rows)

    def _poll(self, row: Row) -> None:
        assert row.job_id is not None
        log = self._log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
        outcome = self._client.job_status(row.job_id)
        interval = min(self._max, (row.poll_interval or self._initial) * self._factor)
        if isinstance(outcome, JobStatus):
            self._on_status(outcome.status)
            finished = outcome.finished_ms / 1000 if outcome.finished_ms is not None else None
            final = outcome.status in ("completed", "failed")
            if final and self._move:
                # Files first: the final status stops the polling, so it is committed only once they moved.
                self._settle_files(row, outcome, log)
            self._ledger.update_job(
                row.id,
                job_status=outcome.status,
                job_finished_at=finished,
                job_error=outcome.error,
                next_poll_at=None if final else self._clock.time() + interval,
                poll_interval=interval,
            )
            if outcome.status == "failed":
                log.warning("job.failed", error=outcome.error)
            elif outcome.status == "completed":
                log.info("job.completed")
            return
        if isinstance(outcome, Rejected):
            # The API no longer knows the job: stop asking, keep the record.
            self._ledger.update_job(
                row.id, job_error=f"status: HTTP {outcome.status} {outcome.message}", next_poll_at=None
            )
            log.warning("job.unknown", status=outcome.status, message=outcome.message)
            return
        self._ledger.update_job(row.id, next_poll_at=self._clock.time() + interval, poll_interval=interval)

    def _settle_files(self, row: Row, status: JobStatus, log: Any) -> None:
        """With done_after = "completed": move the pair from uploaded/ to done/ or failed/."""
        if not row.destination:
            return
        audio = Path(row.destination)
        root = self._folders.stages["uploaded"]
        try:
            rel = PurePosixPath(audio.relative_to(root).as_posix())
        except ValueError:
            return  # not in uploaded/ (already moved, or moved by hand)
        if not os.path.lexists(audio):
            return  # moved before a crash took the ledger's note of it
        sidecar = next(
            (c for c in (audio.with_suffix(".json"), audio.with_name(audio.name + ".json")) if c.exists()), None
        )
        side_rel = PurePosixPath(sidecar.relative_to(root).as_posix()) if sidecar else None
        claimed = Claimed(Pair(rel, side_rel), root, root)
        if status.status == "completed":
            dest = self._folders.finish(claimed, "done")
            self._ledger.update_job(row.id, destination=str(dest))
            return
        problem = Problem("job_failed", f"Crescendo's job {row.job_id} failed: {status.error or 'no reason given'}")
        error = error_document(audio.name, side_rel, row.recording_id, problem, self._clock, job_id=row.job_id)
        dest = self._folders.finish(claimed, "failed", error=error)
        self._ledger.transition(row.id, "failed", destination=str(dest), last_error=f"job_failed: {status.error}")
        log.warning("files.job_failed", destination=str(dest))
