"""The ledger-decided steps of a journey: open a row, finish a move, record a duplicate or a failure.

Each asks core.journey what to do and acts on the answer; a compare-and-set miss means another process
moved first, and the question is asked again. A failure's or a duplicate's destination is committed
before its files move, so a move cut short is finished from the row, never decided afresh.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from vocwatch.core.content import Content, needs_sha256, recorded
from vocwatch.core.journey import (
    Busy,
    Conflict,
    DoneAction,
    DropCopies,
    Duplicate,
    FinishDelete,
    FinishMove,
    LoneSeen,
    LoneStep,
    OnConflict,
    ReturnToInbox,
    Seen,
    Upload,
    decide,
    decide_lone,
)
from vocwatch.core.model import Clock, End, Problem, Unsettled
from vocwatch.core.pairing import classify
from vocwatch.core.reasons import Reason
from vocwatch.core.schedule import layout_folder
from vocwatch.core.states import Row, Stage, State
from vocwatch.edges.digest import blake3_of, of_path, sha256_of
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledgers import HolderAlive, LedgerStore
from vocwatch.runtime.errors import error_document, problem_of

Log = Any  # structlog's BoundLogger is not precisely typed
Finished = Literal[End.DONE, End.FAILED, End.DUPLICATE, End.RELEASED]
# How often a worker looks again at a recording that another live process holds open.
BUSY_POLL_S = 0.2
# Compare-and-set misses in a row before a pair is put back to be taken again later.
MAX_RACES = 8


class Recorder(Protocol):
    """Counters for STATUS and metrics; every method must be cheap and thread-safe."""

    def finished(
        self, state: str, *, reason: str = "", nbytes: int = 0, seconds: float = 0.0, audio_s: float = 0.0
    ) -> None: ...

    def retried(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    on_conflict: OnConflict
    done_stage: Stage
    require_sidecar: bool
    done_action: DoneAction = DoneAction.MOVE
    done_layout: str = ""  # folders.done_layout: done/'s sub-folder by acceptance date


class Settler:
    def __init__(
        self,
        *,
        folders: Folders,
        ledger: LedgerStore,
        clock: Clock,
        policy: Policy,
        recorder: Recorder,
        stopping: threading.Event,
        holder_alive: HolderAlive | None = None,
    ) -> None:
        self.folders = folders
        self.ledger = ledger
        self.clock = clock
        self.policy = policy
        self.recorder = recorder
        self._stopping = stopping
        self.me = ledger.holder or folders.work.name
        # Liveness of another row holder: its work folder's flock by default, its lease in the fleet ledger.
        self.holder_alive = holder_alive or folders.holder_alive

    def done_folder(self) -> str:
        """done/'s sub-folder for a pair accepted now (folders.done_layout, local time)."""
        layout = self.policy.done_layout
        return layout_folder(layout, datetime.fromtimestamp(self.clock.time())) if layout else ""

    def _deleting(self) -> bool:
        return self.policy.done_action == DoneAction.DELETE

    def _alive(self, rows: list[Row]) -> frozenset[str]:
        holders = {r.holder for r in rows if r.holder and r.holder != self.me}
        return frozenset(h for h in holders if self.holder_alive(h))

    def _linked(self, claimed: Claimed, rows: list[Row]) -> frozenset[int]:
        return frozenset(r.id for r in rows if r.destination and _same_file(claimed.audio, Path(r.destination)))

    # -- a whole pair ------------------------------------------------------------------------

    def open_row(
        self,
        claimed: Claimed,
        rid: str,
        digest: str,
        size: int,
        log: Log,
        audio: Mapping[str, Any],
        legacy: Callable[[], str],
    ) -> Row | Finished | Problem | Unsettled:
        """The row to upload in, or how the journey ended without one (core.journey.decide). ``digest``: the
        recording's BLAKE3; ``legacy()`` its sha256, asked for only when a row of ``rid`` holds one."""
        rel = str(claimed.pair.audio)
        races = 0
        sha256: str | None = None
        while races < MAX_RACES:
            rows = self.ledger.find(rid)
            if sha256 is None and needs_sha256(r.sha256 for r in rows):
                sha256 = legacy()
                log.info("claim.legacy_digest", note="a row of this recording id holds an earlier version's sha256")
            content = Content(digest, sha256)
            seen = Seen(rid, content, rel, self.me, self._alive(rows), self._linked(claimed, rows))
            step = decide(rows, seen, self.policy.on_conflict, self.policy.done_action)
            if isinstance(step, Upload):
                row = self.ledger.claim(rid, _kept(step.take, content), rel, size, step.take, audio=audio)
                if row is not None:
                    return row
                races += 1
            elif isinstance(step, Busy):
                log.info("claim.busy", holder=step.row.holder, note="another vocwatch is uploading this recording")
                if self._stopping.wait(BUSY_POLL_S):
                    return Unsettled("shutting down while another process held this recording")
            elif isinstance(step, FinishMove | FinishDelete):
                # A crash fell between committing the decision and moving (or deleting) the files: finish that.
                return self.finish(claimed, step.row, log.bind(job_id=step.row.job_id))
            elif isinstance(step, DropCopies):
                return self._drop_copies(claimed, step.row, log)
            elif isinstance(step, Duplicate):
                done = self._duplicate(claimed, step, rid, _kept(step.take, content), size, log)
                if done is not None:
                    return done
                races += 1
            elif isinstance(step, Conflict):
                problem = Problem(
                    Reason.CONFLICT,
                    f"recording id {rid} was already uploaded with different content (job {', '.join(step.jobs)}); "
                    'give this recording its own id, or set upload.on_conflict = "upload"',
                )
                if step.take is None:
                    return problem
                # This content already has a row (a crash's leftover, or a put-back): it ends failed, with
                # the recording's own id, instead of staying open beside a new failed row.
                taken = self.ledger.claim(rid, _kept(step.take, content), rel, size, step.take)
                if taken is None:
                    races += 1
                    continue
                return self.fail(claimed, problem, log, self.clock.monotonic(), row=taken, recording_id=rid)
            else:  # pragma: no cover - decide() returns ReturnToInbox only for lone files
                raise AssertionError(step)
        return Unsettled("the ledger row kept changing under this claim; it is taken again later")

    def _duplicate(
        self, claimed: Claimed, step: Duplicate, rid: str, digest: str, size: int, log: Log
    ) -> Finished | None:
        """Record this copy as a duplicate of ``step.of``'s job: the row with its destination first, then the
        move, then the final state. None: another process opened a row for this content meanwhile."""
        job = step.of.job_id or step.of.duplicate_of
        row = self.ledger.claim(rid, digest, str(claimed.pair.audio), size, step.take)
        if row is None:
            return None
        if self._deleting():
            # Ended first (as deleted: no destination), then removed, the sidecar first: a lone recording a
            # crash leaves is known by that row and deleted too (core.journey.decide_lone), never sent again.
            row = self.ledger.transition(row, State.DUPLICATE, event="deleted", duplicate_of=job, destination=None)
            self.folders.remove(claimed)
            log.info("upload.duplicate", job_id=job, destination=None, deleted=True, bytes=size, row=row.id)
            self.recorder.finished(End.DUPLICATE)
            return End.DUPLICATE
        planned = self.folders.plan_destination(claimed, Stage.DONE, sub=self.done_folder())
        row = self.ledger.note(row, "duplicate", duplicate_of=job, destination=str(planned))
        self.finish(claimed, row, log)
        log.info("upload.duplicate", job_id=job, destination=row.destination, bytes=size)
        return End.DUPLICATE

    def _drop_copies(self, claimed: Claimed, row: Row, log: Log) -> Finished:
        # A power cut kept the move's links at the destination but lost the unlinks from work/.
        assert row.destination is not None
        self.folders.forget_copies(claimed, Path(row.destination))
        log.info("recover.dropped_copy", job_id=row.job_id, destination=row.destination)
        return End.DONE

    # -- finishing a decided move ----------------------------------------------------------------

    def finish(self, claimed: Claimed, row: Row, log: Log) -> Finished:
        """Move a pair whose fate the row records (accepted, or a failure or duplicate decided) to the row's
        destination, then end the row: also what recovery does with a move a crash cut short."""
        assert row.destination is not None, row
        planned = Path(row.destination)
        stage = self.folders.stage_of(planned) or self.policy.done_stage
        if row.state == State.ACCEPTED and stage == Stage.DONE and self._deleting():
            # done_action = "delete": the sidecar first; a crash leaves the recording, which the row finds.
            self.folders.remove(claimed)
            self.ledger.transition(row, State.DONE, event="deleted", destination=None)
            log.debug("files.deleted")
            return End.DONE
        claimed = self.folders.with_sidecar_ahead(claimed, planned)
        flat = planned.parent == self.folders.stages[stage] and claimed.pair.audio.parent != PurePosixPath(".")
        error = None
        if stage == Stage.FAILED and not os.path.lexists(planned.with_name(planned.stem + ".error.json")):
            problem = problem_of(row.last_error)
            error = error_document(claimed.pair.audio.name, claimed.pair.sidecar, row.recording_id, problem, self.clock)
        dest = self.folders.finish(claimed, stage, planned, error=error, flat=flat)
        if row.state == State.ACCEPTED:
            after = State.UPLOADED if stage == Stage.UPLOADED else State.DONE
        else:
            after = State.DUPLICATE if row.duplicate_of is not None else State.FAILED
        self.ledger.transition(row, after, destination=str(dest))
        log.debug("files.moved", destination=str(dest), state=str(after))
        if after == State.DUPLICATE:
            self.recorder.finished(End.DUPLICATE)
            return End.DUPLICATE
        if after == State.FAILED:
            self.recorder.finished(End.FAILED, reason=problem_of(row.last_error).code)
            return End.FAILED
        return End.DONE

    # -- a lone recording ------------------------------------------------------------------------

    def lone(self, claimed: Claimed, log: Log) -> Finished | None:
        """A recording in work/ without its sidecar beside it: finish a move cut short (the sidecar moves
        first), else put it back to pair again. None: a recording claimed alone, to upload under its stem."""
        rel = str(claimed.pair.audio)
        rows = self.ledger.by_file(rel)
        relevant = [r for r in rows if r.state in (State.ACCEPTED, State.DONE, State.UPLOADED, State.DUPLICATE)]
        if not relevant and not any(r.state in (State.CLAIMED, State.UPLOADING) and r.destination for r in rows):
            step: LoneStep = ReturnToInbox()
        else:
            try:
                content = Content(
                    of_path(claimed.audio, blake3_of),
                    of_path(claimed.audio, sha256_of) if needs_sha256(r.sha256 for r in rows) else None,
                )
            except OSError:
                return None  # let the pair's own path say why it cannot be read
            seen = LoneSeen(rel, content, self.me, self._alive(rows), self._linked(claimed, rows))
            step = decide_lone(rows, seen, self.policy.done_action)
        if isinstance(step, FinishDelete) and step.row.state != State.ACCEPTED:
            # A duplicate recorded as deleted whose sidecar went before a crash: the recording goes too.
            self.folders.remove(claimed)
            log.info("recover.deleted", row=step.row.id, state=str(step.row.state))
            return End.DONE
        if isinstance(step, FinishMove | FinishDelete):
            log.info("recover.half_moved", job_id=step.row.job_id, destination=step.row.destination)
            return self.finish(claimed, step.row, log.bind(job_id=step.row.job_id))
        if isinstance(step, DropCopies):
            return self._drop_copies(claimed, step.row, log)
        if isinstance(step, Busy):
            return End.RELEASED  # its holder finishes it
        if self.policy.require_sidecar or classify(claimed.pair.audio.name)[0] != "audio":
            log.info("claim.half_returned")
            self.folders.release(claimed)
            return End.RELEASED
        return None

    # -- failure ----------------------------------------------------------------------------------

    def fail(
        self,
        claimed: Claimed,
        problem: Problem,
        log: Log,
        started: float,
        *,
        row: Row | None,
        recording_id: str,
        digest: str = "",
        flat: bool = False,
        **extra: Any,
    ) -> Finished:
        """Send the pair to failed/ with its reason: the decision and destination first (durable), then
        the files, then the final state, so that a crash in between finishes the same failure."""
        error = error_document(
            claimed.pair.audio.name, claimed.pair.sidecar, recording_id, problem, self.clock, **extra
        )
        rel = str(claimed.pair.audio)
        size = claimed.audio.lstat().st_size if os.path.lexists(claimed.audio) else 0
        reason = f"{problem.code}: {problem.message}"
        planned = self.folders.plan_destination(claimed, Stage.FAILED, with_error=True, flat=flat)
        if row is None:
            # An open row of this file and content that a crash left (nobody live holds it) ends failed too.
            rows = self.ledger.find(recording_id, digest)
            alive = self._alive(rows)
            stale = [
                r
                for r in rows
                if r.state in (State.CLAIMED, State.UPLOADING)
                and r.file == rel
                and (r.holder in (None, self.me) or r.holder not in alive)
            ]
            # None: another process holds this content open; the failure is recorded after the move instead.
            row = self.ledger.claim(recording_id, digest, rel, size, stale[-1] if stale else None)
        if row is not None:
            row = self.ledger.note(row, "failing", last_error=reason, destination=str(planned))
        dest = self.folders.finish(claimed, Stage.FAILED, planned, error=error, flat=flat)
        if row is None:
            self.ledger.record_terminal(
                recording_id, digest, rel, size, State.FAILED, last_error=reason, destination=str(dest)
            )
        else:
            self.ledger.transition(row, State.FAILED, last_error=reason, destination=str(dest))
        ms = round((self.clock.monotonic() - started) * 1000)
        log.warning(
            "upload.failed", reason=problem.code, message=problem.message, destination=str(dest), bytes=size, ms=ms
        )
        self.recorder.finished(End.FAILED, reason=problem.code)
        return End.FAILED


def _kept(take: Row | None, content: Content) -> str:
    """The digest a claim records: the taken row's own when it names this content (an earlier version's
    sha256 keeps its Idempotency-Key), else this version's BLAKE3."""
    return recorded(None if take is None else take.sha256, content)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False
