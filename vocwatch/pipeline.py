"""One pair's journey from work/ to done/ or failed/: validate, hash, dedupe, upload, record, move."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

import structlog

from vocwatch.client import metadata_json
from vocwatch.folders import Claimed, Folders, Stage
from vocwatch.ledger import UPLOADED_STATES, Ledger, Row
from vocwatch.model import Accepted, AuthProblem, Clock, Outcome, Problem, Rejected, Retry, Unsettled
from vocwatch.pairing import printable
from vocwatch.reasons import REASONS
from vocwatch.validate import (
    CONTENT_TYPES,
    HEAD_BYTES,
    MAX_SIDECAR_BYTES,
    build_metadata,
    check_audio,
    fd_open_for_writing,
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
    on_conflict: Literal["fail", "upload"] = "fail"
    done_stage: Stage = "done"
    poll_initial_s: float | None = 5.0  # None: the status poller is off


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
        self.log = log or structlog.get_logger("vocwatch.pipeline")
        # (recording id, sha256) of every pair between prepare() and done_with(): the same recording
        # dropped twice at once must wait for the first to settle, then become its duplicate.
        self._active: set[tuple[str, str]] = set()
        self._active_lock = threading.Lock()

    # -- preparation ---------------------------------------------------------------------

    def prepare(self, claimed: Claimed) -> Prepared | Finished:
        """Validate and hash a claimed pair; settle duplicates, conflicts and crash leftovers."""
        rel = str(claimed.pair.audio)
        log = self.log.bind(file=rel)
        started = self.clock.monotonic()
        if not self.folders.exists(claimed):
            log.warning("claim.vanished", note="the pair left work/ before it was taken; nothing to do")
            return "released"
        opened = open_regular(claimed.audio)
        if isinstance(opened, Problem):
            return self._fail_unopened(claimed, opened, log, started)
        fh = os.fdopen(opened, "rb")
        try:
            ready = self._validate(claimed, fh, log, started)
        except OSError as exc:
            ready = Problem("unreadable", f"{claimed.pair.audio.name}: {exc.strerror or exc}")
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
        if fd_open_for_writing(fh.fileno()):  # a writer appeared after the claim (pairing.py, rule 3)
            return Unsettled("a writer holds the recording open")
        rid = str(metadata["id"])
        log = log.bind(recording_id=rid)
        with self._active_lock:
            if (rid, digest) in self._active:
                return Unsettled("the same recording is being uploaded under another name; it waits for that one")
            self._active.add((rid, digest))
        try:
            settled = self._settle_known(claimed, rid, digest, st.st_size, log)
            row = (
                None if settled is not None else self.ledger.open_row(rid, digest, str(claimed.pair.audio), st.st_size)
            )
        except BaseException:
            self._forget_active(rid, digest)
            raise
        if row is None:
            self._forget_active(rid, digest)
            return settled if settled is not None else "released"
        content_type = CONTENT_TYPES[os.path.splitext(claimed.pair.audio.name)[1].lower()]
        return Prepared(claimed, row, fh, metadata_json(metadata), content_type, digest, signature, log, started)

    def done_with(self, prep: Prepared) -> None:
        """End of a prepared pair's journey, however it ended: close its file, free its recording id."""
        prep.fh.close()
        self._forget_active(prep.row.recording_id, prep.sha256)

    def _forget_active(self, rid: str, digest: str) -> None:
        with self._active_lock:
            self._active.discard((rid, digest))

    def _settle_known(self, claimed: Claimed, rid: str, digest: str, size: int, log: Log) -> Finished | Problem | None:
        """What the ledger already knows decides: a crash leftover, a duplicate, or a conflict."""
        rows = self.ledger.find(rid)
        for row in rows:
            if row.state == "accepted" and row.sha256 == digest and row.file == str(claimed.pair.audio):
                # A crash fell between committing the job id and moving the files: finish the move.
                self.finish_accepted(claimed, row, log.bind(job_id=row.job_id))
                return "done"
            if row.state == "done" and row.destination and _same_file(claimed.audio, Path(row.destination)):
                # A power cut kept the move's link in done/ but lost the unlink from work/: drop the copy.
                self.folders.forget_copies(claimed, Path(row.destination))
                log.info("recover.dropped_copy", job_id=row.job_id, destination=row.destination)
                return "done"
        uploaded = [r for r in rows if r.state in UPLOADED_STATES]
        same = [r for r in uploaded if r.sha256 == digest]
        if same:
            job = same[0].job_id
            dest = self.folders.finish(claimed, "done")
            self.ledger.record_terminal(
                rid, digest, str(claimed.pair.audio), size, "duplicate", duplicate_of=job, destination=str(dest)
            )
            log.info("upload.duplicate", job_id=job, destination=str(dest), bytes=size)
            self.recorder.finished("duplicate")
            return "duplicate"
        if uploaded and self.options.on_conflict == "fail":
            jobs = ", ".join(sorted({r.job_id or "?" for r in uploaded}))
            return Problem(
                "conflict",
                f"recording id {rid} was already uploaded with different content (job {jobs}); "
                'give this recording its own id, or set upload.on_conflict = "upload"',
            )
        return None

    # -- one attempt ---------------------------------------------------------------------

    def attempt(self, prep: Prepared) -> Outcome:
        """Send once and act on a final outcome; transient ones are returned for the pool to wait on."""
        self.ledger.begin_attempt(prep.row.id)
        started = self.clock.monotonic()
        outcome = self.client.upload(
            prep.fh,
            filename=prep.claimed.pair.audio.name,
            content_type=prep.content_type,
            metadata=prep.metadata,
            idempotency_key=f"{prep.row.recording_id}-{prep.sha256}",
        )
        seconds = self.clock.monotonic() - started
        if not isinstance(outcome, Accepted):
            if _signature(prep.fh) != prep.signature:
                outcome = Unsettled(f"the recording changed during upload ({_reason(outcome)})")
            elif fd_open_for_writing(prep.fh.fileno()):
                outcome = Unsettled(f"a writer opened the recording during upload ({_reason(outcome)})")
        if isinstance(outcome, Accepted):
            self._accepted(prep, outcome.job_id, seconds)
        elif isinstance(outcome, Rejected):
            self._rejected(prep, outcome)
        elif isinstance(outcome, Unsettled):
            self._release_unsettled(prep.claimed, prep, outcome, prep.log)
        else:
            self.ledger.transition(prep.row.id, "claimed", event="retry", last_error=_reason(outcome))
            self.recorder.retried(_reason(outcome))
        return outcome

    def _accepted(self, prep: Prepared, job_id: str, seconds: float) -> None:
        log = prep.log.bind(job_id=job_id)
        dest = self.folders.plan_destination(prep.claimed, self.options.done_stage)
        poll_at = None if self.options.poll_initial_s is None else self.clock.time() + self.options.poll_initial_s
        # The job id is durable before any file moves: a crash from here on never re-uploads.
        self.ledger.transition(
            prep.row.id,
            "accepted",
            job_id=job_id,
            destination=str(dest),
            last_error=None,
            next_poll_at=poll_at,
            poll_interval=self.options.poll_initial_s,
        )
        prep.fh.close()
        self.finish_accepted(prep.claimed, replace(prep.row, job_id=job_id, destination=str(dest)), log)
        size = prep.signature[0]
        log.info("upload.accepted", bytes=size, ms=round(seconds * 1000), attempts=prep.row.attempts + 1)
        self.recorder.finished("done", nbytes=size, seconds=seconds)

    def finish_accepted(self, claimed: Claimed, row: Row, log: Log | None = None) -> None:
        """Move an accepted pair to its recorded destination and mark it done (also crash recovery)."""
        log = log or self.log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
        planned = Path(row.destination) if row.destination else None
        try:
            dest = self.folders.finish(claimed, self.options.done_stage, planned)
        except FileExistsError:  # someone else's file took the planned name meanwhile
            dest = self.folders.finish(claimed, self.options.done_stage)
        self.ledger.transition(row.id, "done", destination=str(dest))
        log.debug("files.moved", destination=str(dest))

    def _rejected(self, prep: Prepared, outcome: Rejected) -> None:
        prep.fh.close()
        problem = Problem(
            "rejected", f"Crescendo refused the upload: HTTP {outcome.status} {outcome.code}: {outcome.message}"
        )
        extra = {"http_status": outcome.status, "server_code": outcome.code, "server_message": outcome.message}
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
        self.ledger.transition(prep.row.id, "released", last_error=why)
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
        **extra: Any,
    ) -> Finished:
        error = error_document(
            claimed.pair.audio.name, claimed.pair.sidecar, recording_id, problem, self.clock, **extra
        )
        size = claimed.audio.lstat().st_size if os.path.lexists(claimed.audio) else 0
        dest = self.folders.finish(claimed, "failed", error=error)
        fields: dict[str, Any] = {"last_error": f"{problem.code}: {problem.message}", "destination": str(dest)}
        if row is None:
            self.ledger.record_terminal(recording_id, "", str(claimed.pair.audio), size, "failed", **fields)
        else:
            self.ledger.transition(row.id, "failed", **fields)
        ms = round((self.clock.monotonic() - started) * 1000)
        log.warning(
            "upload.failed", reason=problem.code, message=problem.message, destination=str(dest), bytes=size, ms=ms
        )
        self.recorder.finished("failed")
        return "failed"


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
