"""One pair's journey from work/ to done/ or failed/: validate, hash, dedupe, upload, record, move."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any, Literal, Protocol

import structlog

from vocwatch.core.audio import Incomplete, Unknown, describe
from vocwatch.core.journey import DoneAction, OnConflict
from vocwatch.core.model import Accepted, Clock, End, Outcome, Problem, Rejected, Unsettled
from vocwatch.core.pairing import printable
from vocwatch.core.reasons import Reason
from vocwatch.core.states import Row, Stage, State
from vocwatch.edges.audio import facts, structure_of
from vocwatch.edges.client import metadata_json
from vocwatch.edges.digest import blake3_of, sha256_of
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledgers import HolderAlive, LedgerStore
from vocwatch.edges.validate import (
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
from vocwatch.runtime.errors import name_too_long, outcome_line
from vocwatch.runtime.settle import Finished, Policy, Recorder, Settler

Log = Any  # structlog's BoundLogger is not precisely typed


class Uploader(Protocol):
    def upload(
        self, audio: IO[bytes], *, filename: str, content_type: str, metadata: str, idempotency_key: str
    ) -> Outcome: ...


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
    truncated: Literal["fail", "upload"] = "fail"  # watch.truncated: what an incomplete structure gets


@dataclass(frozen=True, slots=True)
class Checked:
    """What reading a claimed pair found: its id, metadata, content digest (``blake3:<hex>``) and audio facts."""

    recording_id: str
    metadata: Mapping[str, Any]
    digest: str
    signature: tuple[int, int, int]
    audio_s: float | None
    columns: Mapping[str, Any]


@dataclass(slots=True)
class Prepared:
    """A validated, hashed pair with its open file and its ledger row, ready to send."""

    claimed: Claimed
    row: Row
    fh: io.BufferedReader
    metadata: str
    content_type: str
    digest: str  # as hashed (BLAKE3): this process's key for "the same recording in flight"
    signature: tuple[int, int, int]
    log: Log
    started: float  # monotonic time the journey began, for the outcome's duration
    audio_s: float | None = None  # seconds of audio, for vocwatch_audio_seconds_total
    reply_wait_s: float | None = None  # the last attempt's wait for its reply (upload.workers = "auto")


class Pipeline:
    def __init__(
        self,
        *,
        folders: Folders,
        client: Uploader,
        ledger: LedgerStore,
        clock: Clock,
        options: PipelineOptions,
        recorder: Recorder,
        log: Log | None = None,
        holder_alive: HolderAlive | None = None,
    ) -> None:
        self.folders = folders
        self.client = client
        self.ledger = ledger
        self.clock = clock
        self.options = options
        self.recorder = recorder
        self.log = log or structlog.get_logger("vocwatch.runtime.pipeline")
        # (recording id, digest) of every pair between prepare() and done_with(): the same recording
        # dropped twice at once must wait for the first to settle, then become its duplicate.
        self._active: set[tuple[str, str]] = set()
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self.settle = Settler(
            folders=folders,
            ledger=ledger,
            clock=clock,
            policy=Policy(
                options.on_conflict,
                options.done_stage,
                options.require_sidecar,
                options.done_action,
                options.done_layout,
            ),
            recorder=recorder,
            stopping=self._stopping,
            holder_alive=holder_alive,
        )
        self.me = self.settle.me

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
            return End.RELEASED
        if claimed.leftover:
            if self.folders.finish_put_back(claimed):
                log.info("recover.put_back", note="a put-back to the inbox was cut short; it is finished")
                return End.RELEASED
            if claimed.sidecar is not None:
                self.folders.forget_put_back(claimed)
        if claimed.sidecar is None:
            lone = self.settle.lone(claimed, log)
            if lone is not None:
                return lone
        opened = open_regular(claimed.audio)
        if isinstance(opened, Problem):
            return self._fail_unopened(claimed, opened, log, started)
        fh = os.fdopen(opened, "rb")
        try:
            try:
                checked = self._check(claimed, fh, log)
            except OSError as exc:  # reading the recording or its sidecar: the file's own trouble
                checked = Problem(Reason.UNREADABLE, f"{claimed.pair.audio.name}: {exc.strerror or exc}")
            # Past here an OSError is a move's (a full disk): it leaves the pair in work/ for the next rescan.
            ready = self._open(claimed, fh, checked, log, started) if isinstance(checked, Checked) else checked
        except BaseException:
            fh.close()
            raise
        if isinstance(ready, Prepared):
            return ready
        fh.close()
        if isinstance(ready, Unsettled):
            return self._release_unsettled(claimed, None, ready, log)
        if isinstance(ready, Problem):
            digest = checked.digest if isinstance(checked, Checked) else ""
            rid = checked.recording_id if isinstance(checked, Checked) else PurePosixPath(claimed.pair.audio.name).stem
            return self.settle.fail(claimed, ready, log, started, row=None, recording_id=rid, digest=digest)
        return ready

    def _check(self, claimed: Claimed, fh: io.BufferedReader, log: Log) -> Checked | Problem | Unsettled:
        """Read the sidecar and the recording: metadata, structure, hash; nothing is moved or committed."""
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
        seen = claimed.seen
        # The planner's verdict stands while the recording is as it saw it; a backfill's or a leftover's
        # claim (or a file changed since) is checked here.
        verdict = (
            seen.verdict
            if seen is not None and seen.signature == signature
            else structure_of(fh.fileno(), claimed.pair.audio.name)
        )
        if isinstance(verdict, Incomplete):
            # The planner claims an incomplete recording only once it stayed so for incomplete_timeout_seconds
            # (a backfill: at once); a leftover in work/ has no writer left either.
            cut = {"present": verdict.present, "declared": verdict.declared, "cut_offset": verdict.cut_offset}
            if self.options.truncated == "fail":
                return Problem(Reason.TRUNCATED, f"{claimed.pair.audio.name}: {verdict.message()}")
            log.warning("upload.truncated", why=verdict.why, **cut, note='watch.truncated = "upload": sent as it is')
        elif isinstance(verdict, Unknown):
            log.info("upload.structure_unknown", why=verdict.why, placeholder=verdict.placeholder)
        digest = blake3_of(fh.fileno())
        if _signature(fh) != signature:
            return Unsettled("the recording changed while it was hashed")
        if fd_open_for_writing(fh.fileno()):  # a writer appeared after the claim (pairing.py, rule 3)
            return Unsettled("a writer holds the recording open")
        audio = facts(fh, claimed.pair.audio.name, verdict)
        columns = {**audio.columns(), "structure": None if verdict is None else describe(verdict)}
        return Checked(str(metadata["id"]), metadata, digest, signature, audio.duration_s, columns)

    def _open(
        self, claimed: Claimed, fh: io.BufferedReader, c: Checked, log: Log, started: float
    ) -> Prepared | Problem | Unsettled | Finished:
        """Open the journey's ledger row (or end it: a duplicate, a leftover's move, a conflict)."""
        rid, digest = c.recording_id, c.digest
        log = log.bind(recording_id=rid)
        with self._active_lock:
            if (rid, digest) in self._active:
                return Unsettled("the same recording is being uploaded under another name; it waits for that one")
            self._active.add((rid, digest))
        try:
            opened_row = self.settle.open_row(
                claimed, rid, digest, c.signature[0], log, c.columns, lambda: sha256_of(fh.fileno())
            )
        except BaseException:
            self._forget_active(rid, digest)
            raise
        if not isinstance(opened_row, Row):
            self._forget_active(rid, digest)
            return opened_row
        content_type = CONTENT_TYPES[os.path.splitext(claimed.pair.audio.name)[1].lower()]
        return Prepared(
            claimed,
            opened_row,
            fh,
            metadata_json(c.metadata),
            content_type,
            digest,
            c.signature,
            log,
            started,
            c.audio_s,
        )

    def done_with(self, prep: Prepared) -> None:
        """End of a prepared pair's journey, however it ended: close its file, free its recording id."""
        prep.fh.close()
        self._forget_active(prep.row.recording_id, prep.digest)

    def _forget_active(self, rid: str, digest: str) -> None:
        with self._active_lock:
            self._active.discard((rid, digest))

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
            # The row's stored digest, never one computed now: a row an earlier version left uploading keeps
            # the key (recording id and sha256) it was first sent with.
            idempotency_key=f"{prep.row.recording_id}-{prep.row.sha256}",
        )
        seconds = self.clock.monotonic() - started
        # From the end of the body to the reply, where the client measures it: what a slower server shows in.
        reply_wait = getattr(self.client, "reply_wait", None)
        prep.reply_wait_s = reply_wait() if callable(reply_wait) else seconds
        if not isinstance(outcome, Accepted):
            if _signature(prep.fh) != prep.signature:
                outcome = Unsettled(f"the recording changed during upload ({outcome_line(outcome)})")
            elif fd_open_for_writing(prep.fh.fileno()):
                outcome = Unsettled(f"a writer opened the recording during upload ({outcome_line(outcome)})")
        if isinstance(outcome, Accepted):
            self._accepted(prep, outcome.job_id, seconds)
        elif isinstance(outcome, Rejected):
            self._rejected(prep, outcome)
        elif isinstance(outcome, Unsettled):
            self._release_unsettled(prep.claimed, prep, outcome, prep.log)
        else:
            prep.row = self.ledger.transition(prep.row, State.CLAIMED, event="retry", last_error=outcome_line(outcome))
            self.recorder.retried(outcome_line(outcome))
        return outcome

    def _accepted(self, prep: Prepared, job_id: str, seconds: float) -> None:
        log = prep.log.bind(job_id=job_id)
        sub = self.settle.done_folder() if self.options.done_stage == Stage.DONE else ""
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
        log.info("upload.accepted", bytes=size, ms=round(seconds * 1000), attempts=prep.row.attempts)
        self.recorder.finished(End.DONE, nbytes=size, seconds=seconds, audio_s=prep.audio_s or 0.0)

    def finish_accepted(self, claimed: Claimed, row: Row, log: Log | None = None) -> None:
        """Move an accepted pair to its recorded destination (or, done_action = "delete" with done/ as its
        stage, remove it) and end its row (also crash recovery). The job id is durable by now."""
        log = log or self.log.bind(recording_id=row.recording_id, job_id=row.job_id, file=row.file)
        self.settle.finish(claimed, row, log)

    def _rejected(self, prep: Prepared, outcome: Rejected) -> None:
        prep.fh.close()
        problem = Problem(
            Reason.REJECTED, f"Crescendo refused the upload: HTTP {outcome.status} {outcome.code}: {outcome.message}"
        )
        extra: dict[str, Any] = {
            "http_status": outcome.status,
            "server_code": outcome.code,
            "server_message": outcome.message,
        }
        self.settle.fail(
            prep.claimed, problem, prep.log, prep.started, row=prep.row, recording_id=prep.row.recording_id, **extra
        )

    def give_up(self, prep: Prepared, waited_s: float, last: str) -> None:
        prep.fh.close()
        problem = Problem(
            Reason.GAVE_UP, f"transient errors for {waited_s:.0f} s (last: {last}); drop it again to retry"
        )
        self.settle.fail(
            prep.claimed, problem, prep.log, prep.started, row=prep.row, recording_id=prep.row.recording_id
        )

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
        self.recorder.finished(End.RELEASED)
        return End.RELEASED

    # -- failure -------------------------------------------------------------------------

    def fail_name_too_long(self, claimed: Claimed, exc: OSError) -> Finished:
        """ENAMETOOLONG is no passing trouble (a retry meets the same name): the pair goes to the top of
        failed/, where only its own (fitted) names count, with the reason and where it came from."""
        log = self.log.bind(file=printable(str(claimed.pair.audio)))
        stem = PurePosixPath(claimed.pair.audio.name).stem
        problem = name_too_long(str(claimed.pair.audio), exc)
        path = printable(str(claimed.pair.audio))
        return self.settle.fail(
            claimed, problem, log, self.clock.monotonic(), row=None, recording_id=stem, flat=True, path=path
        )

    def _fail_unopened(self, claimed: Claimed, problem: Problem, log: Log, started: float) -> Finished:
        stem = PurePosixPath(claimed.pair.audio.name).stem
        return self.settle.fail(claimed, problem, log, started, row=None, recording_id=stem)


def _signature(fh: IO[bytes]) -> tuple[int, int, int]:
    st = os.fstat(fh.fileno())
    return (st.st_size, st.st_mtime_ns, st.st_ino)
