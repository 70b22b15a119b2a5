"""The recording state machine: the states a ledger row can be in, and which may follow which.

Every ledger write is a compare-and-set against this table (edges.ledger), so a transition that is not
listed here is refused however it is attempted: by a bug, a race, or a second process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class State(StrEnum):
    CLAIMED = "claimed"  # in work/, held by ``holder``; nothing sent yet (or a retry is due)
    UPLOADING = "uploading"  # the request may be on the wire
    ACCEPTED = "accepted"  # the job id is durable; the files may still be in work/
    UPLOADED = "uploaded"  # done_after = "completed": in uploaded/, waiting for the job to end
    DONE = "done"  # in done/
    FAILED = "failed"  # in failed/, with NAME.error.json
    DUPLICATE = "duplicate"  # in done/, the same recording as an earlier row's job
    RELEASED = "released"  # put back in the inbox (shutdown, or it changed); taken again later


class Stage(StrEnum):
    """The folders a pair can end its journey in."""

    DONE = "done"
    FAILED = "failed"
    UPLOADED = "uploaded"


# A row that is open is held by one process (its ``holder``) until it leaves these states.
OPEN = frozenset({State.CLAIMED, State.UPLOADING})
# Its job id is known: sending the same content again could only make a duplicate.
UPLOADED = frozenset({State.ACCEPTED, State.UPLOADED, State.DONE})
FINAL = frozenset({State.DONE, State.FAILED, State.DUPLICATE})
# These commits must be on disk before the next step: the job id (before the files move, or a crash
# re-uploads) and a failure (its files are already in failed/); the rest recovery repairs.
DURABLE = frozenset({State.ACCEPTED, State.FAILED})

# None: the row is being born.
TRANSITIONS: Mapping[State | None, frozenset[State]] = {
    None: frozenset({State.CLAIMED, State.FAILED, State.DUPLICATE}),
    # claimed -> claimed: a crash leftover or a dead holder's row is taken over by the next claim.
    # claimed -> duplicate: the same content already has a job; the row records this copy's move to done/.
    State.CLAIMED: frozenset({State.CLAIMED, State.UPLOADING, State.RELEASED, State.FAILED, State.DUPLICATE}),
    State.UPLOADING: frozenset({State.CLAIMED, State.ACCEPTED, State.RELEASED, State.FAILED}),
    State.RELEASED: frozenset({State.CLAIMED}),
    State.ACCEPTED: frozenset({State.DONE, State.UPLOADED}),
    State.UPLOADED: frozenset({State.DONE, State.FAILED}),
    State.DONE: frozenset(),
    State.FAILED: frozenset(),
    State.DUPLICATE: frozenset(),
}


def allowed(before: State | None, after: State) -> bool:
    return after in TRANSITIONS[before]


def sources(after: State) -> frozenset[State]:
    """Every state ``after`` may follow: the compare half of a compare-and-set."""
    return frozenset(s for s, nexts in TRANSITIONS.items() if s is not None and after in nexts)


class JobState(StrEnum):
    """What Crescendo says of an accepted job (crescendo-voc-status.md), plus ``unknown``: it forgot it."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"


FINAL_JOB = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Row:
    """One recording's ledger row, as read."""

    id: int
    recording_id: str
    sha256: str
    file: str
    size: int
    state: State
    job_id: str | None
    job_status: str | None
    job_finished_at: float | None
    job_error: str | None
    next_poll_at: float | None
    poll_interval: float | None
    attempts: int
    last_error: str | None
    duplicate_of: str | None
    destination: str | None
    unknown_since: float | None
    created_at: float
    updated_at: float
    holder: str | None = None
    duration_seconds: float | None = None
    codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    structure: str | None = None
    host: str | None = None  # the instance that took it; unlike holder, kept once the row ends

    def export(self) -> dict[str, Any]:
        """The public row shape of ``vocwatch ledger export`` and ``ledger list --json``."""
        return {
            "recording_id": self.recording_id,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "state": str(self.state),
            "job_id": self.job_id or self.duplicate_of,
            "job_status": self.job_status,
            "job_finished_at": self.job_finished_at,
            "job_error": self.job_error,
            "attempts": self.attempts,
            "error": self.last_error,
            "duplicate_of": self.duplicate_of,
            "destination": self.destination,
            "holder": self.holder,
            "duration_seconds": self.duration_seconds,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "structure": self.structure,
            "host": self.host,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
