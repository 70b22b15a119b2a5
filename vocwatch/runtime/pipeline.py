"""One pair's journey from work/ to done/ or failed/: validate, hash, dedupe, upload, record, move."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

import structlog

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
from vocwatch.core.model import Accepted, AuthProblem, Clock, Outcome, Problem, Rejected, Retry, Unsettled
from vocwatch.core.pairing import classify, printable
from vocwatch.core.reasons import REASONS
from vocwatch.core.schedule import layout_folder
from vocwatch.core.states import Row, Stage, State
from vocwatch.edges.client import metadata_json
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.edges.validate import (
    CONTENT_TYPES,
    HEAD_BYTES,
    MAX_SIDECAR_BYTES,
    build_metadata,
    check_audio,
    open_regular,
    parse_sidecar,
    read_small,
)

Log = Any  # structlog's BoundLogger is not precisely typed


class Uploader(Protocol):
    def upload(
        self, audio: IO[bytes], *, filename: str, content_type: str, metadata: str, idempotency_key: str
    ) -> Outcome: ...


class Recorder(Protocol):
    """Counters for STATUS and metrics; every method must be cheap and thread-safe."""

    def finished(self, state: str, *, nbytes: int = 0, seconds: float = 0.0) -> None: ...

    def retried(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    max_bytes: int
    defaults: Mapping[str, Any]
    on_conflict: OnConflict = OnConflict.FAIL
    done_stage: Stage = Stage.DONE
    poll_initial_s: float | None = 5.0  # None: the status poller is off
    require_sidecar: bool = True
    done_action: DoneAction = DoneAction.MOVE
    done_layout: str = ""  # folders.done_layout: done/'s sub-folder by acceptance date


@dataclass(slots=True)
class Prepared:
    """A validated, hashed pair with its open file and its ledger row, ready to send."""

    claimed: Claimed
    row: Row
    fh: io.BufferedReader
    metadata: str
    content_type: str
    sha256: str
    signature: tuple[int, int, int]
    log: Log
    started: float  # monotonic time the journey began, for the outcome's duration


Finished = Literal["done", "failed", "duplicate", "released"]
# How often a worker looks again at a recording that another live process holds open.
BUSY_POLL_S = 0.2
# Compare-and-set misses in a row before a pair is put back to be taken again later.
MAX_RACES = 8


class Pipeline:
    def __init__(
        self,
        *,
        folders: Folders,
        client: Uploader,
        ledger: Ledger,
        clock: Clock,
        options: PipelineOptions,
        recorder: Recorder,
        log: Log | None = None,
    ) -> None:
        self.folders = folders
        self.client = client
        self.ledger = ledger
        self.clock = clock
        self.options = options
        self.recorder = recorder
        self.log = log or structlog.get_logger("vocwatch.runtime.pipeline")
        # (recording id, sha256) of every pair between prepare() and done_with(): the same recording
        # dropped twice at once must wait for the first to settle, then become its duplicate.
        self._active: set[tuple[str, str]] = set()
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self.me = ledger.holder or folders.work.name

    def stop(self) -> None:
        """Stop waiting for recordings that another process holds (shutdown)."""
        self._stopping.set()

    # -- preparation ---------------------------------------------------------------------

    def prepare(self, claimed: Claimed) -> Prepared | Finished:
        """Validate and hash a claimed pair; settle duplicates, conflicts and crash leftovers."""
        rel = str(claimed.pair.audio)
        log = self.log.bind(file=rel)
        started = self.clock.monotonic()
        if not self.folders.exists(claimed):
            log.warning("claim.vanished", note="the pair left work/ before it was taken; nothing to do")
            return "released"
        if claimed.sidecar is None:
            lone = self._settle_lone(claimed, log)
            if lone is not None:
                return lone
        opened = open_regular(claimed.audio)
        if isinstance(opened, Problem):
            return self._fail_unopened(claimed, opened, log, started)
        fh = os.fdopen(opened, "rb")
        try:
            ready = self._validate(claimed, fh, log, started)
        except OSError as exc:
            ready = Problem("unreadable", f"{claimed.pair.audio.name}: {exc.strerror or exc}")
        except BaseException:
            fh.close()
            raise
        if isinstance(ready, Prepared):
            return ready
        fh.close()
        if isinstance(ready, Unsettled):
            return self._release_unsettled(claimed, None, ready, log)
        if isinstance(ready, Problem):
            return self._fail_unopened(claimed, ready, log, started)
        return ready

    def _validate(
        self, claimed: Claimed, fh: io.BufferedReader, log: Log, started: float
    ) -> Prepared | Problem | Unsettled | Finished:
        st = os.fstat(fh.fileno())
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        sidecar: dict[str, Any] | None = None
        if claimed.sidecar is not None:
            side = open_regular(claimed.sidecar)
            if isinstance(side, Problem):
                return side
            with os.fdopen(side, "rb", buffering=0) as sfh:
                parsed = parse_sidecar(read_small(sfh.fileno(), MAX_SIDECAR_BYTES))
            if isinstance(parsed, Problem):
                return parsed
            sidecar = parsed
        stem = PurePosixPath(claimed.pair.audio.name).stem
        metadata = build_metadata(sidecar, stem, self.options.defaults)
        if isinstance(metadata, Problem):
            return metadata
        head = os.pread(fh.fileno(), HEAD_BYTES, 0)
        problem = check_audio(claimed.pair.audio.name, st.st_size, head, self.options.max_bytes)
        if problem is not None:
            return problem
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if _signature(fh) != signature:
            return Unsettled("the recording changed while it was hashed")
        rid = str(metadata["id"])
        log = log.bind(recording_id=rid)
        with self._active_lock:
            if (rid, digest) in self._active:
                return Unsettled("the same recording is being uploaded under another name; it waits for that one")
            self._active.add((rid, digest))
        try:
            opened_row = self._open_row(claimed, rid, digest, st.st_size, log)
        except BaseException:
            self._forget_active(rid, digest)
            raise
        if not isinstance(opened_row, Row):
            self._forget_active(rid, digest)
            return opened_row
        row = opened_row
        content_type = CONTENT_TYPES[os.path.splitext(claimed.pair.audio.name)[1].lower()]
        return Prepared(claimed, row, fh, metadata_json(metadata), content_type, digest, signature, log, started)

    def done_with(self, prep: Prepared) -> None:
        """End of a prepared pair's journey, however it ended: close its file, free its recording id."""
        prep.fh.close()
        self._forget_active(prep.row.recording_id, prep.sha256)

    def _forget_active(self, rid: str, digest: str) -> None:
        with self._active_lock:
            self._active.discard((rid, digest))

    def _alive(self, rows: list[Row]) -> frozenset[str]:
        holders = {r.holder for r in rows if r.holder and r.holder != self.me}
        return frozenset(h for h in holders if self.folders.holder_alive(h))

    def _linked(self, claimed: Claimed, rows: list[Row]) -> frozenset[int]:
        return frozenset(r.id for r in rows if r.destination and _same_file(claimed.audio, Path(r.destination)))

    def _open_row(
        self, claimed: Claimed, rid: str, digest: str, size: int, log: Log
    ) -> Row | Finished | Problem | Unsettled:
        """Decide from the ledger (core.journey.decide) and act; a compare-and-set miss decides again."""
        rel = str(claimed.pair.audio)
        races = 0
        while races < MAX_RACES:
            rows = self.ledger.find(rid)
            seen = Seen(rid, digest, rel, self.me, self._alive(rows), self._linked(claimed, rows))
            step = decide(rows, seen, self.options.on_conflict, self.options.done_action)
            if isinstance(step, Upload):
                row = self.ledger.claim(rid, digest, rel, size, step.take)
                if row is not None:
                    return row
                races += 1
            elif isinstance(step, Busy):
                log.info("claim.busy", holder=step.row.holder, note="another vocwatch is uploading this recording")
                if self._stopping.wait(BUSY_POLL_S):
                    return Unsettled("shutting down while another process held this recording")
            elif isinstance(step, FinishMove | FinishDelete):
                # A crash fell between committing the job id and moving (or deleting) the files: finish that.
                self.finish_accepted(claimed, step.row, log.bind(job_id=step.row.job_id))
                return "done"
            elif isinstance(step, DropCopies):
                # A power cut kept the move's link at the destination but lost the unlink from work/.
                assert step.row.destination is not None
                self.folders.forget_copies(claimed, Path(step.row.destination))
                log.info("recover.dropped_copy", job_id=step.row.job_id, destination=step.row.destination)
                return "done"
            elif isinstance(step, Duplicate):
                return self._duplicate(claimed, step.of, rid, digest, size, log)
            elif isinstance(step, Conflict):
                return Problem(
                    "conflict",
                    f"recording id {rid} was already uploaded with different content (job {', '.join(step.jobs)}); "
                    'give this recording its own id, or set upload.on_conflict = "upload"',
                )
            else:  # pragma: no cover - decide() returns ReturnToInbox only for lone files
                raise AssertionError(step)
        return Unsettled("the ledger row kept changing under this claim; it is taken again later")

    def _duplicate(self, claimed: Claimed, of: Row, rid: str, digest: str, size: int, log: Log) -> Finished:
        job = of.job_id or of.duplicate_of
        rel = str(claimed.pair.audio)
        if self.options.done_action == DoneAction.DELETE:
            # Recorded first (as deleted: no destination), then removed: a lone recording a crash leaves is
            # known by that row and deleted too (core.journey.decide_lone), never sent or put back.
            row = self.ledger.record_terminal(rid, digest, rel, size, State.DUPLICATE, duplicate_of=job)
            self.folders.remove(claimed)
            log.info("upload.duplicate", job_id=job, destination=None, deleted=True, bytes=size, row=row.id)
        else:
            dest = self.folders.finish(claimed, Stage.DONE, sub=self._done_folder())
            self.ledger.record_terminal(
                rid, digest, rel, size, State.DUPLICATE, duplicate_of=job, destination=str(dest)
            )
            log.info("upload.duplicate", job_id=job, destination=str(dest), bytes=size)
        self.recorder.finished("duplicate")
        return "duplicate"

    def _settle_lone(self, claimed: Claimed, log: Log) -> Finished | None:
        """A recording in work/ without its sidecar beside it: finish a half-done move (the sidecar moves
        first), else put it back to pair again. None: it is a lone recording to upload under its stem."""
        rel = str(claimed.pair.audio)
        rows = self.ledger.by_file(rel)
        if not any(r.state in (State.ACCEPTED, State.DONE, State.UPLOADED, State.DUPLICATE) for r in rows):
            step: LoneStep = ReturnToInbox()
        else:
            try:
                digest = _sha256_of(claimed.audio)
            except OSError:
                return None  # let the pair's own path say why it cannot be read
            seen = LoneSeen(rel, digest, self.me, self._alive(rows), self._linked(claimed, rows))
            step = decide_lone(rows, seen, self.options.done_action)
        if isinstance(step, FinishDelete) and step.row.state != State.ACCEPTED:
            # A duplicate recorded as deleted whose sidecar went before a crash: the recording goes too.
            self.folders.remove(claimed)
            log.info("recover.deleted", row=step.row.id, state=str(step.row.state))
            return "done"
        if isinstance(step, FinishMove | FinishDelete):
            log.info("recover.half_moved", job_id=step.row.job_id, destination=step.row.destination)
            self.finish_accepted(claimed, step.row, log.bind(job_id=step.row.job_id))
            return "done"
        if isinstance(step, DropCopies):
            assert step.row.destination is not None
            self.folders.forget_copies(claimed, Path(step.row.destination))
            return "done"
        if isinstance(step, Busy):
            return "released"  # its holder finishes it
        if self.options.require_sidecar or classify(claimed.pair.audio.name)[0] != "audio":
            log.info("claim.half_returned")
            self.folders.release(claimed)
            return "released"
        return None

    # -- one attempt ---------------------------------------------------------------------

    def attempt(self, prep: Prepared) -> Outcome:
        """Send once and act on a final outcome; transient ones are returned for the pool to wait on."""
        prep.row = self.ledger.begin_attempt(prep.row)
        started = self.clock.monotonic()
        outcome = self.client.upload(
            prep.fh,
            filename=prep.claimed.pair.audio.name,
            content_type=prep.content_type,
            metadata=prep.metadata,
            idempotency_key=f"{prep.row.recording_id}-{prep.sha256}",
        )
        seconds = self.clock.monotonic() - started
        if not isinstance(outcome, Accepted) and _signature(prep.fh) != prep.signature:
            outcome = Unsettled(f"the recording changed during upload ({_reason(outcome)})")
        if isinstance(outcome, Accepted):
            self._accepted(prep, outcome.job_id, seconds)
        elif isinstance(outcome, Rejected):
            self._rejected(prep, outcome)
        elif isinstance(outcome, Unsettled):
            self._release_unsettled(prep.claimed, prep, outcome, prep.log)
        else:
            prep.row = self.ledger.transition(prep.row, State.CLAIMED, event="retry", last_error=_reason(outcome))
            self.recorder.retried(_reason(outcome))
        return outcome

    def _accepted(self, prep: Prepared, job_id: str, seconds: float) -> None:
        log = prep.log.bind(job_id=job_id)
        sub = self._done_folder() if self.options.done_stage == Stage.DONE else ""
        dest = self.folders.plan_destination(prep.claimed, self.options.done_stage, sub=sub)
        poll_at = None if self.options.poll_initial_s is None else self.clock.time() + self.options.poll_initial_s
        # The job id is durable before any file moves: a crash from here on never re-uploads.
        prep.row = self.ledger.transition(
            prep.row,
            State.ACCEPTED,
            job_id=job_id,
            destination=str(dest),
            last_error=None,
            next_poll_at=poll_at,
            poll_interval=self.options.poll_initial_s,
        )
        prep.fh.close()
        self.finish_accepted(prep.claimed, prep.row, log)
        size = prep.signature[0]
        log.info("upload.accepted", bytes=size, ms=round(seconds * 1000), attempts=prep.row.attempts + 1)
        self.recorder.finished("done", nbytes=size, seconds=seconds)

    def _done_folder(self) -> str:
        """done/'s sub-folder for a pair accepted now (folders.done_layout, local time)."""
        layout = self.options.done_layout
        return layout_folder(layout, datetime.fromtimestamp(self.clock.time())) if layout else ""

    def finish_accepted(self, claimed: Claimed, row: Row, log: Log | None = None) -> None:
        """Move an accepted pair to its recorded destination (or, done_action = "delete" with done/ as its
        stage, remove it) and mark it done (also crash recovery). The job id is durable by now."""
        log = log or self.log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
        planned = Path(row.destination) if row.destination else None
        stage = self.folders.stage_of(planned) if planned is not None else None
        stage = stage or self.options.done_stage
        if stage == Stage.DONE and self.options.done_action == DoneAction.DELETE:
            self.folders.remove(claimed)  # the sidecar first: a crash leaves the recording, which the row finds
            self.ledger.transition(row, State.DONE, event="deleted", destination=None)
            log.debug("files.deleted")
            return
        dest = self.folders.finish(claimed, stage, planned)
        after = State.UPLOADED if stage == Stage.UPLOADED else State.DONE
        self.ledger.transition(row, after, destination=str(dest))
        log.debug("files.moved", destination=str(dest))

    def _rejected(self, prep: Prepared, outcome: Rejected) -> None:
        prep.fh.close()
        problem = Problem(
            "rejected", f"Crescendo refused the upload: HTTP {outcome.status} {outcome.code}: {outcome.message}"
        )
        extra: dict[str, Any] = {
            "http_status": outcome.status,
            "server_code": outcome.code,
            "server_message": outcome.message,
        }
        self._fail(
            prep.claimed, problem, prep.log, prep.started, row=prep.row, recording_id=prep.row.recording_id, **extra
        )

    def give_up(self, prep: Prepared, waited_s: float, last: str) -> None:
        prep.fh.close()
        problem = Problem("gave_up", f"transient errors for {waited_s:.0f} s (last: {last}); drop it again to retry")
        self._fail(prep.claimed, problem, prep.log, prep.started, row=prep.row, recording_id=prep.row.recording_id)

    def release(self, prep: Prepared, why: str) -> None:
        """Put a prepared pair back in the inbox untouched (shutdown, or it changed)."""
        prep.fh.close()
        self.folders.release(prep.claimed)
        prep.row = self.ledger.transition(prep.row, State.RELEASED, last_error=why)
        prep.log.info("upload.released", reason=why)

    def _release_unsettled(self, claimed: Claimed, prep: Prepared | None, why: Unsettled, log: Log) -> Finished:
        if prep is not None:
            self.release(prep, why.reason)
        else:
            self.folders.release(claimed)
            log.info("upload.released", reason=why.reason)
        self.recorder.finished("released")
        return "released"

    # -- failure -------------------------------------------------------------------------

    def fail_name_too_long(self, claimed: Claimed, exc: OSError) -> Finished:
        """ENAMETOOLONG is no passing trouble (a retry meets the same name): the pair goes to the top of
        failed/, where only its own (fitted) names count, with the reason and where it came from."""
        log = self.log.bind(file=printable(str(claimed.pair.audio)))
        stem = PurePosixPath(claimed.pair.audio.name).stem
        problem = name_too_long(str(claimed.pair.audio), exc)
        path = printable(str(claimed.pair.audio))
        return self._fail(
            claimed, problem, log, self.clock.monotonic(), row=None, recording_id=stem, flat=True, path=path
        )

    def _fail_unopened(self, claimed: Claimed, problem: Problem, log: Log, started: float) -> Finished:
        stem = PurePosixPath(claimed.pair.audio.name).stem
        return self._fail(claimed, problem, log, started, row=None, recording_id=stem)

    def _fail(
        self,
        claimed: Claimed,
        problem: Problem,
        log: Log,
        started: float,
        *,
        row: Row | None,
        recording_id: str,
        flat: bool = False,
        **extra: Any,
    ) -> Finished:
        error = error_document(
            claimed.pair.audio.name, claimed.pair.sidecar, recording_id, problem, self.clock, **extra
        )
        size = claimed.audio.lstat().st_size if os.path.lexists(claimed.audio) else 0
        dest = self.folders.finish(claimed, Stage.FAILED, error=error, flat=flat)
        fields: dict[str, Any] = {"last_error": f"{problem.code}: {problem.message}", "destination": str(dest)}
        if row is None:
            self.ledger.record_terminal(recording_id, "", str(claimed.pair.audio), size, State.FAILED, **fields)
        else:
            self.ledger.transition(row, State.FAILED, **fields)
        ms = round((self.clock.monotonic() - started) * 1000)
        log.warning(
            "upload.failed", reason=problem.code, message=problem.message, destination=str(dest), bytes=size, ms=ms
        )
        self.recorder.finished("failed")
        return "failed"


def name_too_long(rel: str, exc: OSError) -> Problem:
    """The Problem of a file whose name or path the file system refuses as too long (ENAMETOOLONG)."""
    return Problem(
        "name_too_long",
        f"{printable(rel)}: {exc.strerror or 'File name too long'} where it had to go "
        "(a name over 255 bytes, or a path over 4096); shorten the file or folder names and drop it again",
    )


def error_document(
    audio_name: str, sidecar: PurePosixPath | None, recording_id: str, problem: Problem, clock: Clock, **extra: Any
) -> dict[str, Any]:
    """The body of ``NAME.error.json``: what went wrong, what it means, when."""
    # printable: a file name that is not UTF-8 must not make the error file itself unwritable.
    return {
        "recording": printable(audio_name),
        "sidecar": printable(sidecar.name) if sidecar is not None else None,
        "recording_id": printable(recording_id),
        "reason": problem.code,
        "message": printable(problem.message),
        "explanation": REASONS.get(problem.code, ""),
        **extra,
        "failed_at": datetime.fromtimestamp(clock.time(), UTC).isoformat(timespec="seconds"),
    }


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _signature(fh: IO[bytes]) -> tuple[int, int, int]:
    st = os.fstat(fh.fileno())
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _reason(outcome: Outcome) -> str:
    if isinstance(outcome, Retry | Unsettled):
        return outcome.reason
    if isinstance(outcome, AuthProblem):
        return f"HTTP {outcome.status}: {outcome.message}" if outcome.status else outcome.message
    if isinstance(outcome, Rejected):
        return f"HTTP {outcome.status} {outcome.code}: {outcome.message}"
    return f"accepted as {outcome.job_id}"
