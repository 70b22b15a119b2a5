"""Files that never formed a pair (a lone recording or sidecar past its wait, a name that cannot be
claimed): to failed/ with their reason file, and a failed ledger row that says so."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from vocwatch.core.model import Clock, Problem
from vocwatch.core.pairing import Expired, classify, printable
from vocwatch.core.states import State
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledgers import LedgerStore
from vocwatch.runtime.errors import error_document, name_too_long


def fail_unpaired(
    folders: Folders, ledger: LedgerStore, origin: Path, expired: Expired, clock: Clock, log: Any
) -> Problem | None:
    """Move ``expired``'s files from ``origin`` to failed/ with the reason, then record a failed row (the
    recording id is the file's stem; the digest is empty: the content was never read). None: nothing was
    there to move (another process, or the producer, took it), so there is nothing to record either.
    OSError: the move failed; nothing was recorded, and the files are still where they were. A row the ledger
    cannot write is logged (``ledger.unrecorded``), never raised: the move is done and the reason file says it."""
    first = expired.files[0]
    if not any(os.path.lexists(origin / rel) for rel in expired.files):
        return None
    stem = classify(first.name)[1]
    problem = expired.problem
    try:
        size = os.lstat(origin / first).st_size
    except OSError:
        size = 0
    try:
        moved = folders.fail_in_place(origin, expired.files, error_document(first.name, None, stem, problem, clock))
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # Permanent (a retry meets the same path): to the top of failed/, saying where they were.
        problem = name_too_long(str(first), exc)
        error = error_document(first.name, None, stem, problem, clock, path=printable(str(first)))
        moved = folders.fail_in_place(origin, expired.files, error, flat=True)
    if not moved:
        return None
    # After the move, never before: on a shared inbox only the process whose rename won records the row.
    # A crash between the two leaves the reason file in failed/ without its row.
    try:
        ledger.record_terminal(
            printable(stem),
            "",
            printable(str(first)),
            size,
            State.FAILED,
            last_error=f"{problem.code}: {problem.message}",
            destination=printable(str(moved[0])),
        )
    except Exception as exc:
        # A ledger that cannot write (a full disk, a refused login, a fleet ledger out of reach at shutdown): the
        # files are in failed/ with their reason all the same. Raising would end the planner's pass and leave
        # the rest of it unplanned, for good.
        log.error(
            "ledger.unrecorded", file=printable(str(first)), reason=problem.code, error=f"{type(exc).__name__}: {exc}"
        )
    return problem
