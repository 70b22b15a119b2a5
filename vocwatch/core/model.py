"""Values that cross module and thread boundaries, and the Protocols of the side channels."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Protocol

from vocwatch.core.reasons import Reason


class Clock(Protocol):
    """Wall time for records, monotonic time for waiting."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Pair:
    """A recording and its sidecar, as paths relative to the folder they sit in."""

    audio: PurePosixPath
    sidecar: PurePosixPath | None


# Outcomes of one upload attempt, returned by the client (it never loops or raises for a reply).


@dataclass(frozen=True, slots=True)
class Accepted:
    job_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the recording itself; sending it again cannot help."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure; ``after`` is the server's Retry-After in seconds, if it gave one."""

    reason: str
    after: float | None = None
    # The HTTP status, when the server answered: 429 and 503 cut "auto" concurrency. A hint, not the outcome.
    status: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AuthProblem:
    """The configuration (key, tenant, URL) is wrong, not the recording: pause everything."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Unsettled:
    """The file changed while it was read or sent; it must settle again."""

    reason: str


Outcome = Accepted | Rejected | Retry | AuthProblem | Unsettled


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a recording can never be uploaded: a stable code (see reasons.py) and a message."""

    code: Reason
    message: str


class End(StrEnum):
    """How one claimed pair's journey through a worker ended (metrics, the backfill's summary)."""

    DONE = "done"  # moved on: a crash leftover finished, or a copy dropped
    ACCEPTED = "accepted"  # uploaded now, job id recorded
    DUPLICATE = "duplicate"
    FAILED = "failed"
    REJECTED = "rejected"  # the server refused it (and it went to failed/)
    RELEASED = "released"  # put back in the inbox, to be taken again
    UNSETTLED = "unsettled"  # it changed while being sent: put back
    ERROR = "error"  # a disk or software error: left in work/ for the next rescan
