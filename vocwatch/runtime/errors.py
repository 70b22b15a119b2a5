"""What a failure says: the body of ``NAME.error.json``, and one line for an outcome."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from vocwatch.core.model import AuthProblem, Clock, Outcome, Problem, Rejected, Retry, Unsettled
from vocwatch.core.pairing import printable
from vocwatch.core.reasons import REASONS, Reason


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


def problem_of(last_error: str | None) -> Problem:
    """The Problem a ledger row's ``last_error`` ("code: message") records, to write its error file again."""
    code, _, message = (last_error or "").partition(": ")
    try:
        return Problem(Reason(code), message)
    except ValueError:
        return Problem(Reason.UNREADABLE, last_error or "the reason was not recorded")


def name_too_long(rel: str, exc: OSError) -> Problem:
    """The Problem of a file whose name or path the file system refuses as too long (ENAMETOOLONG)."""
    return Problem(
        Reason.NAME_TOO_LONG,
        f"{printable(rel)}: {exc.strerror or 'File name too long'} where it had to go "
        "(a name over 255 bytes, or a path over 4096); shorten the file or folder names and drop it again",
    )


def outcome_line(outcome: Outcome) -> str:
    """One line for an outcome, for the ledger's last_error and the logs."""
    if isinstance(outcome, Retry | Unsettled):
        return outcome.reason
    if isinstance(outcome, AuthProblem):
        return f"HTTP {outcome.status}: {outcome.message}" if outcome.status else outcome.message
    if isinstance(outcome, Rejected):
        return f"HTTP {outcome.status} {outcome.code}: {outcome.message}"
    return f"accepted as {outcome.job_id}"
