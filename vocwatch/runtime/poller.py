"""The status poller: follows every accepted job until ``completed`` or ``failed``, at growing intervals."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import structlog

from vocwatch.core.journey import DoneAction, RowSeen, RowStep, decide_row
from vocwatch.core.model import Clock, Pair, Problem, Rejected
from vocwatch.core.reasons import Reason
from vocwatch.core.schedule import layout_folder
from vocwatch.core.states import FINAL_JOB, JobState, Row, Stage, State
from vocwatch.edges.client import JobStatus, StatusOutcome
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import StaleRowError
from vocwatch.edges.ledgers import HolderAlive, LedgerStore
from vocwatch.runtime.errors import error_document
from vocwatch.runtime.recovery import LAGGING_WHILE_RUNNING, recover


class StatusSource(Protocol):
    def job_status(self, job_id: str) -> StatusOutcome: ...


class StatusPoller:
    def __init__(
        self,
        *,
        ledger: LedgerStore,
        client: StatusSource,
        clock: Clock,
        folders: Folders,
        initial_s: float,
        max_s: float,
        factor: float,
        unknown_after_s: float = 3600.0,
        in_flight: Callable[[Row], bool] = lambda row: False,
        on_status: Callable[[str], None] = lambda status: None,
        on_failed: Callable[[str], None] = lambda reason: None,  # a pair moved to failed/ by its job's end
        log: Any = None,
        done_action: DoneAction = DoneAction.MOVE,
        done_layout: str = "",
        holder_alive: HolderAlive | None = None,
    ) -> None:
        self._done_action = done_action
        self._done_layout = done_layout
        self._ledger = ledger
        # Liveness of another row holder: its work folder's flock by default, its lease in the fleet ledger.
        self._holder_alive = holder_alive or folders.holder_alive
        self._client = client
        self._clock = clock
        self._folders = folders
        self._initial = initial_s
        self._max = max_s
        self._factor = factor
        self._unknown_after = unknown_after_s
        self._in_flight = in_flight
        self._on_status = on_status
        self._on_failed = on_failed
        self._log = log or structlog.get_logger("vocwatch.runtime.poller")
        self._stop = threading.Event()
        self.last_progress = clock.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_due()
            except Exception:  # a bug or a ledger error must not end polling; the health check sees a stall
                self._log.exception("poller.error")
            self.last_progress = self._clock.monotonic()
            upcoming = self._ledger.next_poll_at()
            wait = 1.0 if upcoming is None else min(1.0, max(0.05, upcoming - self._clock.time()))
            self._stop.wait(wait)

    def poll_due(self) -> int:
        """Ask about every job whose next poll is due, then move the pairs whose job has ended."""
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
        self.settle_due()
        return len(rows)

    @property
    def folders(self) -> Folders:
        return self._folders

    @property
    def ledger(self) -> LedgerStore:
        return self._ledger

    @property
    def holder_alive(self) -> HolderAlive:
        return self._holder_alive

    def settle_due(self) -> int:
        """Rows in ``uploaded`` whose job has ended: their files move on (done/ or failed/). The row's
        state decides, not the moment the status came: a pair that reached uploaded/ late still moves.
        Rows a lost commit left behind their files are mended first (core.journey.decide_row)."""
        recover(self, self._log, self._in_flight, LAGGING_WHILE_RUNNING)
        rows = self._ledger.settle_due()
        me = self._ledger.holder
        for row in rows:
            if self._stop.is_set():
                break
            if row.holder not in (None, me) and self._holder_alive(row.holder):
                continue  # another live daemon's row: its own poller settles it
            log = self._log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
            try:
                self._settle_files(row, log)
            except StaleRowError:
                log.debug("job.settled_elsewhere")  # another process moved the row on meanwhile
            except OSError as exc:
                log.error("files.move_failed", error=f"{exc.strerror or exc} ({exc.filename})", fix="retried soon")
        return len(rows)

    def _done_folder(self, row: Row) -> str:
        """done/'s sub-folder by the row's acceptance time (its ``accepted`` event), local time."""
        if not self._done_layout:
            return ""
        accepted = [at for at, event, _ in self._ledger.events(row.id) if event == State.ACCEPTED]
        when = accepted[-1] if accepted else self._clock.time()
        return layout_folder(self._done_layout, datetime.fromtimestamp(when))

    def _poll(self, row: Row) -> None:
        assert row.job_id is not None
        log = self._log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
        outcome = self._client.job_status(row.job_id)
        interval = min(self._max, (row.poll_interval or self._initial) * self._factor)
        now = self._clock.time()
        if isinstance(outcome, JobStatus):
            self._on_status(outcome.status)
            finished = outcome.finished_ms / 1000 if outcome.finished_ms is not None else None
            final = outcome.status in FINAL_JOB
            self._ledger.update_job(
                row.id,
                job_status=outcome.status,
                job_finished_at=finished,
                job_error=outcome.error,
                next_poll_at=None if final else now + interval,
                poll_interval=interval,
                unknown_since=None,
            )
            if outcome.status == JobState.FAILED:
                log.warning("job.failed", error=outcome.error)
            elif outcome.status == JobState.COMPLETED:
                log.info("job.completed")
            return
        if isinstance(outcome, Rejected):
            # The API does not know the job (404). It may be late to know it, or have forgotten it: ask
            # again until status.unknown_job_seconds, then end the row with that reason.
            since = row.unknown_since if row.unknown_since is not None else now
            message = f"HTTP {outcome.status} {outcome.message}"
            if now - since >= self._unknown_after:
                self._ledger.update_job(
                    row.id,
                    job_status=JobState.UNKNOWN,
                    job_error=f"Crescendo no longer knows job {row.job_id}: {message} for {now - since:.0f} s",
                    next_poll_at=None,
                )
                log.warning("job.unknown", status=outcome.status, message=outcome.message, seconds=round(now - since))
            else:
                self._ledger.update_job(
                    row.id,
                    unknown_since=since,
                    job_error=f"status: {message}",
                    next_poll_at=now + interval,
                    poll_interval=interval,
                )
                log.info("job.not_found", status=outcome.status, retry_in_s=round(interval))
            return
        self._ledger.update_job(row.id, next_poll_at=now + interval, poll_interval=interval)

    def _settle_files(self, row: Row, log: Any) -> None:
        """A row in ``uploaded`` whose job ended: move its pair from uploaded/ to done/ or failed/. The
        planned destination is noted (durably) before the files move, so a crash between the move and the
        row's end finds them there; the row then ends where they are, never at the stale uploaded/ path."""
        root = self._folders.stages[Stage.UPLOADED]
        audio = Path(row.destination) if row.destination else None
        planned = self._planned(row)
        claimed = None
        if audio is not None and audio.is_relative_to(root) and os.path.lexists(audio):
            rel = PurePosixPath(audio.relative_to(root).as_posix())
            claimed = Claimed(Pair(rel, None), root, root)
            # A sidecar still beside it, or one that went ahead to the planned destination before a crash.
            claimed = self._folders.with_sidecar_ahead(claimed, audio)
            if planned is not None:
                claimed = self._folders.with_sidecar_ahead(claimed, planned)
        where = Stage.UPLOADED if claimed is not None else None
        if where is None and planned is not None and os.path.lexists(planned):
            where = self._folders.stage_of(planned)
        step = decide_row(row, RowSeen(in_work=False, destination=where, mine=True), self._done_action)
        if step == RowStep.KEEP:
            return
        if step == RowStep.SETTLE_DELETE:
            # The job completed, and that is durable in the row's state: the pair may go. A crash after the
            # unlinks and before this commit finds no files here next time, and the row still ends.
            if claimed is not None:
                self._folders.remove(claimed)
            self._ledger.transition(row, State.DONE, event="deleted", destination=None)
            log.info("files.deleted", note="job completed; folders.done_action = delete")
            return
        # MARK_SETTLED: moved before a crash took the row's end; it ends where the files are.
        if step == RowStep.MARK_SETTLED and where == Stage.DONE:
            self._ledger.transition(row, State.DONE, destination=str(planned))
            return
        if step == RowStep.SETTLE_DONE:
            if claimed is None:  # moved by hand: the row still ends, and says where it was
                self._ledger.transition(row, State.DONE, last_error="files not found in uploaded/")
                return
            if planned is None:
                planned = self._folders.plan_destination(claimed, Stage.DONE, sub=self._done_folder(row))
                row = self._ledger.note(row, "settling", detail=str(planned))
            dest = self._folders.finish(claimed, Stage.DONE, planned)
            self._ledger.transition(row, State.DONE, destination=str(dest))
            return
        problem = _job_problem(row)
        fields = {"last_error": f"{problem.code}: {problem.message}"}
        if step == RowStep.MARK_SETTLED:
            fields["destination"] = str(planned)
        elif claimed is not None:
            error: dict[str, Any] | None = error_document(
                claimed.pair.audio.name, claimed.pair.sidecar, row.recording_id, problem, self._clock, job_id=row.job_id
            )
            if planned is None:
                planned = self._folders.plan_destination(claimed, Stage.FAILED, with_error=True)
                row = self._ledger.note(row, "settling", detail=str(planned))
            if os.path.lexists(planned.with_name(planned.stem + ".error.json")):
                error = None  # written before the crash that stopped this move: never overwritten
            fields["destination"] = str(self._folders.finish(claimed, Stage.FAILED, planned, error=error))
        self._ledger.transition(row, State.FAILED, **fields)
        self._on_failed(problem.code)
        log.warning("files.job_failed", reason=problem.code, destination=fields.get("destination"))

    def _planned(self, row: Row) -> Path | None:
        """Where an earlier settle pass of ``row`` said its files would go (its last "settling" event)."""
        noted = [detail for _, event, detail in self._ledger.events(row.id) if event == "settling" and detail]
        return Path(noted[-1]) if noted else None


def _job_problem(row: Row) -> Problem:
    """Why a row whose job ended without completing goes to failed/."""
    if row.job_status == JobState.UNKNOWN:
        return Problem(Reason.JOB_UNKNOWN, row.job_error or f"Crescendo no longer knows job {row.job_id}")
    return Problem(Reason.JOB_FAILED, f"Crescendo's job {row.job_id} failed: {row.job_error or 'no reason given'}")
