"""The pure decisions, as tables: every (row state, observation) pair and the step it leads to."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from vocwatch.core.content import Content
from vocwatch.core.journey import (
    Busy,
    Conflict,
    DoneAction,
    DropCopies,
    Duplicate,
    FinishDelete,
    FinishMove,
    LoneSeen,
    OnConflict,
    ReturnToInbox,
    RowSeen,
    RowStep,
    Seen,
    Upload,
    decide,
    decide_lone,
    decide_row,
)
from vocwatch.core.states import FINAL, TRANSITIONS, JobState, Row, Stage, State, allowed, sources

ME, OTHER, GONE = "host-1", "host-1-upload", "host-2"
SHA, OTHER_SHA = "blake3:" + "a" * 64, "blake3:" + "b" * 64
CONTENT = Content(SHA)


def row(state: State, *, sha: str = SHA, file: str = "call.wav", holder: str | None = ME, rid: int = 1, **kw) -> Row:
    base = Row(
        id=rid,
        recording_id="rec-1",
        sha256=sha,
        file=file,
        size=10,
        state=state,
        job_id="job-1" if state in (State.ACCEPTED, State.UPLOADED, State.DONE) else None,
        job_status=None,
        job_finished_at=None,
        job_error=None,
        next_poll_at=None,
        poll_interval=None,
        attempts=0,
        last_error=None,
        duplicate_of=None,
        destination=None if state in (State.CLAIMED, State.UPLOADING, State.RELEASED) else "/spool/done/call.wav",
        unknown_since=None,
        created_at=0.0,
        updated_at=0.0,
        holder=holder,
    )
    return replace(base, **kw)


def seen(*, alive: frozenset[str] = frozenset({OTHER}), linked: frozenset[int] = frozenset()) -> Seen:
    return Seen("rec-1", CONTENT, "call.wav", ME, alive, linked)


# One row of each kind, alone: (row, observation) -> the step's type.
SINGLE = [
    # no row at all: a new recording
    (None, seen(), Upload),
    # open rows: mine or a dead process's are taken over; a live other's means wait
    (row(State.CLAIMED), seen(), Upload),
    (row(State.UPLOADING), seen(), Upload),
    (row(State.CLAIMED, holder=OTHER), seen(), Busy),
    (row(State.UPLOADING, holder=OTHER), seen(), Busy),
    (row(State.UPLOADING, holder=GONE), seen(), Upload),
    (row(State.CLAIMED, holder=None), seen(), Upload),
    (row(State.CLAIMED, sha=OTHER_SHA, holder=OTHER), seen(), Upload),  # other content: not this one's holder
    # released: reused when it comes back
    (row(State.RELEASED, holder=None), seen(), Upload),
    # accepted: a crash fell between the job id and the move
    (row(State.ACCEPTED), seen(), FinishMove),
    (row(State.ACCEPTED, holder=GONE), seen(), FinishMove),
    (row(State.ACCEPTED, holder=OTHER), seen(), Duplicate),  # another live process is moving its own copy
    (row(State.ACCEPTED, file="other.wav"), seen(), Duplicate),
    (row(State.ACCEPTED, sha=OTHER_SHA), seen(), Conflict),
    # uploaded and done: the same content is a duplicate, other content a conflict
    (row(State.UPLOADED), seen(), Duplicate),
    (row(State.DONE), seen(), Duplicate),
    (row(State.DONE, sha=OTHER_SHA), seen(), Conflict),
    (row(State.UPLOADED, sha=OTHER_SHA), seen(), Conflict),
    # these very files are at the row's destination: a lost unlink
    (row(State.DONE), seen(linked=frozenset({1})), DropCopies),
    (row(State.UPLOADED), seen(linked=frozenset({1})), DropCopies),
    # an open row with a destination: its failure or duplicate was decided, the move cut short
    (row(State.CLAIMED, destination="/spool/failed/call.wav"), seen(), FinishMove),
    (row(State.UPLOADING, destination="/spool/failed/call.wav"), seen(), FinishMove),
    (row(State.CLAIMED, destination="/spool/done/call.wav", duplicate_of="job-0"), seen(), FinishMove),
    (row(State.CLAIMED, destination="/spool/failed/call.wav", holder=OTHER), seen(), Busy),
    (row(State.CLAIMED, destination="/spool/failed/call.wav", file="x.wav"), seen(), Upload),
    # failed and duplicate rows never stop a new attempt
    (row(State.FAILED, holder=None), seen(), Upload),
    (row(State.DUPLICATE, holder=None), seen(), Upload),
]


@pytest.mark.parametrize(("existing", "observed", "step"), SINGLE)
def test_decide_for_each_row_state(existing: Row | None, observed: Seen, step: type) -> None:
    assert type(decide([] if existing is None else [existing], observed)) is step


def test_every_state_is_in_the_single_row_table() -> None:
    assert {r.state for r, _, _ in SINGLE if r is not None} == set(State)


def test_a_conflict_uploads_anyway_when_told_to() -> None:
    assert type(decide([row(State.DONE, sha=OTHER_SHA)], seen(), OnConflict.UPLOAD)) is Upload


def test_an_open_row_is_taken_over_rather_than_a_new_one_made() -> None:
    mine = row(State.UPLOADING, rid=7, holder=GONE)
    step = decide([row(State.FAILED, holder=None, rid=3), mine], seen())
    assert step == Upload(mine)


def test_a_released_row_of_the_same_file_comes_back_with_new_content() -> None:
    back = row(State.RELEASED, sha=OTHER_SHA, holder=None, rid=4)
    assert decide([back], seen()) == Upload(back)


def test_busy_wins_over_a_conflict_with_an_older_job() -> None:
    rows = [row(State.DONE, sha=OTHER_SHA, rid=1), row(State.UPLOADING, holder=OTHER, rid=2)]
    assert type(decide(rows, seen())) is Busy


LONE = [
    ([], frozenset(), ReturnToInbox),
    ([row(State.ACCEPTED)], frozenset(), FinishMove),
    ([row(State.ACCEPTED, holder=OTHER)], frozenset(), Busy),
    ([row(State.ACCEPTED, sha=OTHER_SHA)], frozenset(), ReturnToInbox),
    ([row(State.DONE)], frozenset({1}), DropCopies),
    ([row(State.DONE)], frozenset(), ReturnToInbox),
    ([row(State.UPLOADED)], frozenset({1}), DropCopies),
    ([row(State.FAILED, holder=None)], frozenset(), ReturnToInbox),
    ([row(State.CLAIMED, destination="/spool/failed/call.wav")], frozenset(), FinishMove),
    ([row(State.CLAIMED, destination="/spool/failed/call.wav", sha="")], frozenset(), FinishMove),
    ([row(State.CLAIMED, destination="/spool/done/call.wav", duplicate_of="job-0")], frozenset(), FinishMove),
    ([row(State.CLAIMED, destination="/spool/failed/call.wav", holder=OTHER)], frozenset(), Busy),
    ([row(State.CLAIMED)], frozenset(), ReturnToInbox),
]


@pytest.mark.parametrize(("rows", "linked", "step"), LONE)
def test_decide_for_a_lone_recording_in_work(rows: list[Row], linked: frozenset[int], step: type) -> None:
    observed = LoneSeen("call.wav", CONTENT, ME, frozenset({OTHER}), linked)
    assert type(decide_lone(rows, observed)) is step


ROWS = [
    # (state, job status, in work/, destination stage, mine) -> step
    (State.ACCEPTED, None, True, None, True, RowStep.KEEP),
    (State.ACCEPTED, None, False, Stage.DONE, True, RowStep.MARK_DONE),
    (State.ACCEPTED, None, False, None, True, RowStep.MARK_DONE),  # moved away by hand: it still arrived
    (State.ACCEPTED, None, False, Stage.UPLOADED, True, RowStep.MARK_UPLOADED),
    (State.ACCEPTED, None, False, Stage.DONE, False, RowStep.KEEP),
    (State.UPLOADED, None, False, Stage.UPLOADED, True, RowStep.KEEP),
    (State.UPLOADED, JobState.STARTED, False, Stage.UPLOADED, True, RowStep.KEEP),
    (State.UPLOADED, JobState.COMPLETED, False, Stage.UPLOADED, True, RowStep.SETTLE_DONE),
    (State.UPLOADED, JobState.FAILED, False, Stage.UPLOADED, True, RowStep.SETTLE_FAILED),
    (State.UPLOADED, JobState.UNKNOWN, False, Stage.UPLOADED, True, RowStep.SETTLE_FAILED),
    (State.UPLOADED, JobState.COMPLETED, False, None, True, RowStep.SETTLE_DONE),
    # the settle pass's move reached its noted destination; a crash took the row's end
    (State.UPLOADED, JobState.COMPLETED, False, Stage.DONE, True, RowStep.MARK_SETTLED),
    (State.UPLOADED, JobState.FAILED, False, Stage.FAILED, True, RowStep.MARK_SETTLED),
    (State.UPLOADED, JobState.STARTED, False, Stage.DONE, True, RowStep.KEEP),
    (State.DONE, JobState.COMPLETED, False, Stage.DONE, True, RowStep.KEEP),
    (State.CLAIMED, None, True, None, True, RowStep.KEEP),
    (State.FAILED, None, False, Stage.FAILED, True, RowStep.KEEP),
]


MOVING = [
    # open rows with a destination (a failure or duplicate decided): (in work/, mine) -> step
    (True, True, RowStep.KEEP),  # the pair's own decision finishes the move
    (False, True, RowStep.MARK_FINAL),  # the files arrived, the final commit was lost
    (False, False, RowStep.KEEP),  # another live process's
]


@pytest.mark.parametrize(("in_work", "mine", "step"), MOVING)
def test_decide_row_for_a_decided_move(in_work: bool, mine: bool, step: RowStep) -> None:
    subject = row(State.CLAIMED, destination="/spool/failed/call.wav")
    assert decide_row(subject, RowSeen(in_work=in_work, destination=Stage.FAILED, mine=mine)) == step


@pytest.mark.parametrize(("state", "job", "in_work", "where", "mine", "step"), ROWS)
def test_decide_row_after_a_restart(
    state: State, job: JobState | None, in_work: bool, where: Stage | None, mine: bool, step: RowStep
) -> None:
    subject = row(state, job_status=job, destination=None if state in (State.CLAIMED,) else "/spool/x/call.wav")
    assert decide_row(subject, RowSeen(in_work=in_work, destination=where, mine=mine)) == step


@pytest.mark.parametrize(("before", "after"), list(itertools.product([None, *State], State)))
def test_the_transition_table_is_the_only_way(before: State | None, after: State) -> None:
    expected = after in TRANSITIONS[before]
    assert allowed(before, after) is expected
    if before is not None:
        assert (before in sources(after)) is expected


def test_final_states_lead_nowhere() -> None:
    assert all(not TRANSITIONS[s] for s in FINAL)


# -- folders.done_action = "delete" -------------------------------------------------------------------

DELETE = DoneAction.DELETE


@pytest.mark.parametrize(
    ("existing", "step"),
    [
        (row(State.ACCEPTED), FinishDelete),  # the job id is durable: the files may go
        (row(State.ACCEPTED, holder=GONE), FinishDelete),
        (row(State.ACCEPTED, holder=OTHER), Duplicate),  # another live process deletes its own copy
        (row(State.DONE, destination=None), Duplicate),  # deleted long ago, dropped again: a duplicate
        (row(State.CLAIMED), Upload),  # nothing is deleted before the job id is durable
        (row(State.UPLOADING), Upload),
    ],
)
def test_decide_with_done_action_delete(existing: Row, step: type) -> None:
    assert type(decide([existing], seen(), OnConflict.FAIL, DELETE)) is step


@pytest.mark.parametrize(
    ("rows", "step"),
    [
        ([row(State.ACCEPTED)], FinishDelete),  # the sidecar went first, then a crash
        ([row(State.ACCEPTED, holder=OTHER)], Busy),
        ([row(State.DUPLICATE, holder=None, destination=None)], FinishDelete),  # a deleted duplicate's half
        ([row(State.DUPLICATE, holder=None, destination=None, sha=OTHER_SHA)], ReturnToInbox),
        ([row(State.DUPLICATE, holder=None)], ReturnToInbox),  # a duplicate in done/: not deleted
        ([row(State.CLAIMED)], ReturnToInbox),
    ],
)
def test_decide_lone_with_done_action_delete(rows: list[Row], step: type) -> None:
    observed = LoneSeen("call.wav", CONTENT, ME, frozenset({OTHER}), frozenset())
    assert type(decide_lone(rows, observed, DELETE)) is step


@pytest.mark.parametrize(
    ("job", "where", "action", "step"),
    [
        (JobState.COMPLETED, Stage.UPLOADED, DELETE, RowStep.SETTLE_DELETE),
        (JobState.COMPLETED, None, DELETE, RowStep.SETTLE_DELETE),  # deleted, then a crash before the commit
        (JobState.FAILED, Stage.UPLOADED, DELETE, RowStep.SETTLE_FAILED),  # a failed job still goes to failed/
        (JobState.UNKNOWN, Stage.UPLOADED, DELETE, RowStep.SETTLE_FAILED),
        (JobState.STARTED, Stage.UPLOADED, DELETE, RowStep.KEEP),
        (JobState.COMPLETED, Stage.UPLOADED, DoneAction.MOVE, RowStep.SETTLE_DONE),
    ],
)
def test_decide_row_with_done_action_delete(
    job: JobState, where: Stage | None, action: DoneAction, step: RowStep
) -> None:
    subject = row(State.UPLOADED, job_status=job, destination="/spool/uploaded/call.wav")
    assert decide_row(subject, RowSeen(in_work=False, destination=where, mine=True), action) == step


def test_an_accepted_row_whose_files_were_deleted_is_marked_done() -> None:
    subject = row(State.ACCEPTED, destination="/spool/done/call.wav")
    assert decide_row(subject, RowSeen(in_work=False, destination=None, mine=True), DELETE) == RowStep.MARK_DONE
