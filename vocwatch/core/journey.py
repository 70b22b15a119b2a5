"""What to do next with a recording: pure decisions over its ledger rows and what was seen on disk.

One function per question, each a table over (row state, observation) in tests/test_journey.py. The
pipeline, recovery, put-backs, half-finished moves and the backfill all ask these; none decides alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from vocwatch.core.content import Content, same
from vocwatch.core.states import FINAL_JOB, OPEN, UPLOADED, JobState, Row, Stage, State


class OnConflict(StrEnum):
    FAIL = "fail"
    UPLOAD = "upload"


class DoneAction(StrEnum):
    """folders.done_action: what happens to a pair once its upload is accepted (or its job completed)."""

    MOVE = "move"  # to done/
    DELETE = "delete"  # both files removed; the ledger keeps the row and its content digest


@dataclass(frozen=True, slots=True)
class Seen:
    """A whole pair found in this process's work/ folder, hashed: what decides its next step."""

    recording_id: str
    content: Content  # its sha256 too when a row of this recording id carries a legacy digest
    file: str  # relative to the work folder
    me: str  # this process's holder name
    alive: frozenset[str]  # holders of this recording's rows that another live process is
    linked_to: frozenset[int] = frozenset()  # rows whose destination is these very files (hard links)


# The steps. Each names the row it acts on, as read: the ledger's compare-and-set refuses it if the
# row changed meanwhile, and the caller decides again.


@dataclass(frozen=True, slots=True)
class Upload:
    """Send it: in a new row (``take`` None) or in ``take``, an open row nobody live holds."""

    take: Row | None


@dataclass(frozen=True, slots=True)
class FinishMove:
    """The job id is durable but the files are still in work/: move them to the row's destination."""

    row: Row


@dataclass(frozen=True, slots=True)
class FinishDelete:
    """done_action = "delete": the row allows it (accepted, durable; or a duplicate recorded as deleted), and
    the files are still in work/: remove them (the sidecar first), then end the row."""

    row: Row


@dataclass(frozen=True, slots=True)
class DropCopies:
    """The files already are at the row's destination (a lost unlink): drop the work/ names."""

    row: Row


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The same recording and content already has a job: record this copy as its duplicate (in ``take``,
    an open row of this content nobody live holds, or a new row)."""

    of: Row
    take: Row | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """The recording id was uploaded with other content, and upload.on_conflict is "fail". ``take``: this
    content's own open or released row (nobody live holds it), which ends failed rather than stay open."""

    jobs: tuple[str, ...]
    take: Row | None = None


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live process holds this recording open: wait for it, then decide again."""

    row: Row


@dataclass(frozen=True, slots=True)
class ReturnToInbox:
    """A lone half the ledger knows nothing of: a claim cut short. It goes back to pair again."""


Step = Upload | FinishMove | FinishDelete | DropCopies | Duplicate | Conflict | Busy | ReturnToInbox


def _deleted(row: Row) -> bool:
    """A row that ended with its files deleted (done_action = "delete"): final, and no destination."""
    return row.state in (State.DONE, State.DUPLICATE) and row.destination is None


def _mine(row: Row, seen: Seen) -> bool:
    """True when no other live process holds ``row``: this one may act on it."""
    return row.holder is None or row.holder == seen.me or row.holder not in seen.alive


def moving(row: Row) -> bool:
    """An open row with a destination is a move in progress: its failure or duplicate is decided and
    durable, and only the files are still to go (they may already be there)."""
    return row.state in OPEN and row.destination is not None


def decide(
    rows: Sequence[Row],
    seen: Seen,
    on_conflict: OnConflict = OnConflict.FAIL,
    done_action: DoneAction = DoneAction.MOVE,
) -> Step:
    """The next step for a whole pair in work/, given every ledger row of its recording id."""
    for row in rows:
        mine_here = same(row.sha256, seen.content) and row.file == seen.file and _mine(row, seen)
        if mine_here and row.state == State.ACCEPTED:
            return FinishDelete(row) if done_action == DoneAction.DELETE else FinishMove(row)
        if mine_here and moving(row):
            return FinishMove(row)
        if row.id in seen.linked_to and row.state in (State.DONE, State.UPLOADED, State.DUPLICATE):
            return DropCopies(row)
    ours = [r for r in rows if same(r.sha256, seen.content)]
    ours_ids = {r.id for r in ours}
    held = [r for r in ours if r.state in OPEN]
    busy = [r for r in held if not _mine(r, seen)]
    # A move in progress belongs to its own file: another copy of the content never takes it over.
    takeable = [r for r in held if _mine(r, seen) and not (moving(r) and r.file != seen.file)]
    uploaded = [r for r in ours if r.state in UPLOADED]
    if uploaded:
        return Duplicate(uploaded[0], takeable[-1] if takeable else None)
    if busy:
        return Busy(busy[0])
    released = [r for r in rows if r.state == State.RELEASED and (r.file == seen.file or r.id in ours_ids)]
    take = held[-1] if held else released[-1] if released else None
    others = [r for r in rows if r.state in UPLOADED and r.id not in ours_ids]
    if others and on_conflict == OnConflict.FAIL:
        released = [r for r in rows if r.state == State.RELEASED and (r.file == seen.file or r.id in ours_ids)]
        take = takeable[-1] if takeable else released[-1] if released else None
        return Conflict(tuple(sorted({r.job_id or "?" for r in others})), take)
    if takeable:
        return Upload(takeable[-1])
    released = [r for r in rows if r.state == State.RELEASED and (r.file == seen.file or r.id in ours_ids)]
    return Upload(released[-1] if released else None)


@dataclass(frozen=True, slots=True)
class LoneSeen:
    """A single file in work/ whose partner is not beside it."""

    file: str  # relative to the work folder
    content: Content
    me: str
    alive: frozenset[str]
    linked_to: frozenset[int] = frozenset()


LoneStep = FinishMove | FinishDelete | DropCopies | ReturnToInbox | Busy


def decide_lone(rows: Sequence[Row], seen: LoneSeen, done_action: DoneAction = DoneAction.MOVE) -> LoneStep:
    """A lone recording in work/: its sidecar moved on (or was deleted) before a crash or a failed move (the
    sidecar always goes first), or a claim was cut short. ``rows``: the ledger's rows for this file."""
    probe = Seen("", seen.content, seen.file, seen.me, seen.alive, seen.linked_to)
    for row in rows:
        if row.id in seen.linked_to and row.state in (State.DONE, State.UPLOADED, State.DUPLICATE):
            return DropCopies(row)
        # A failure decided before its content was known has no digest: the file and the open row say it.
        ours = same(row.sha256, seen.content) or (moving(row) and row.sha256 == "")
        if row.file == seen.file and ours and (row.state == State.ACCEPTED or moving(row)):
            if not _mine(row, probe):
                return Busy(row)
            if row.state == State.ACCEPTED and done_action == DoneAction.DELETE:
                return FinishDelete(row)
            return FinishMove(row)
        deleted_here = _deleted(row) and row.file == seen.file and same(row.sha256, seen.content)
        if deleted_here and done_action == DoneAction.DELETE:
            return FinishDelete(row)  # its sidecar was deleted, then the process died before the recording was
    return ReturnToInbox()


# -- rows that recovery meets without files in work/ -------------------------------------------


class RowStep(StrEnum):
    KEEP = "keep"  # nothing to do now
    MARK_FINAL = "mark_final"  # a failure or duplicate whose files reached their destination: end the row
    MARK_DONE = "mark_done"  # the files reached done/ (or are gone); the ledger missed it
    MARK_UPLOADED = "mark_uploaded"  # done_after = "completed": the files reached uploaded/
    SETTLE_DONE = "settle_done"  # the job completed: move uploaded/ -> done/
    SETTLE_FAILED = "settle_failed"  # the job failed or was forgotten: move uploaded/ -> failed/
    SETTLE_DELETE = "settle_delete"  # the job completed and done_action = "delete": remove uploaded/'s files
    MARK_SETTLED = "mark_settled"  # a settle move reached done/ or failed/; a crash took the row's end


@dataclass(frozen=True, slots=True)
class RowSeen:
    in_work: bool  # the row's file is in its holder's work/: the pair's own decision handles it
    destination: Stage | None  # the stage folder the row's destination lies in, if it exists there
    mine: bool  # no other live process holds the row


def decide_row(row: Row, seen: RowSeen, done_action: DoneAction = DoneAction.MOVE) -> RowStep:
    """For a row after a restart (and for the poller): does the ledger or a move lag behind?"""
    if seen.in_work or not seen.mine:
        return RowStep.KEEP
    if moving(row):
        return RowStep.MARK_FINAL  # not in work/: at its destination, or removed by hand after the decision
    if row.state == State.ACCEPTED:
        if row.destination is None:
            return RowStep.KEEP
        # Gone from work/ and not in uploaded/: moved to done/, or removed by hand after its job id
        # was recorded. Either way it arrived; the row must not stay open.
        return RowStep.MARK_UPLOADED if seen.destination == Stage.UPLOADED else RowStep.MARK_DONE
    if row.state == State.UPLOADED and row.job_status in FINAL_JOB:
        if seen.destination in (Stage.DONE, Stage.FAILED):  # at the destination the settle pass noted
            return RowStep.MARK_SETTLED
        if row.job_status != JobState.COMPLETED:
            return RowStep.SETTLE_FAILED
        # Delete only once the job completed: a job that fails still sends its pair to failed/.
        return RowStep.SETTLE_DELETE if done_action == DoneAction.DELETE else RowStep.SETTLE_DONE
    return RowStep.KEEP
