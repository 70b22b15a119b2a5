"""Recovery at start-up: every row that a crash left ahead of or behind its files, put right.

Decided by core.journey.decide_row, the same rule the poller's settle pass follows; pairs in work/
are each decided by the pipeline when the planner offers them, so there is no separate code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from vocwatch.core.journey import RowSeen, RowStep, decide_row
from vocwatch.core.states import Row, State
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledger import Ledger, StaleRowError


class Parts(Protocol):
    """What recovery works on: one process's folders and ledger."""

    @property
    def folders(self) -> Folders: ...

    @property
    def ledger(self) -> Ledger: ...


def observe(parts: Parts, row: Row) -> RowSeen:
    folders = parts.folders
    # The row's files wait in its holder's work folder (a backfill's, a dead peer's), not only in ours.
    work = folders.work.parent / row.holder if row.holder else folders.work
    in_work = os.path.lexists(work / PurePosixPath(row.file))
    destination = None
    if row.destination and os.path.lexists(row.destination):
        destination = folders.stage_of(Path(row.destination))
    mine = row.holder is None or row.holder == parts.ledger.holder or not folders.holder_alive(row.holder)
    return RowSeen(in_work=in_work, destination=destination, mine=mine)


def mend(parts: Parts, row: Row, log: Any) -> bool:
    """Bring one row up to its files if a crash (or a lost commit) left it behind; True if it changed."""
    step = decide_row(row, observe(parts, row))
    try:
        if step == RowStep.MARK_DONE:
            parts.ledger.transition(row, State.DONE, event="recovered", destination=row.destination)
        elif step == RowStep.MARK_UPLOADED:
            parts.ledger.transition(row, State.UPLOADED, event="recovered", destination=row.destination)
        elif step == RowStep.MARK_FINAL:
            after = State.DUPLICATE if row.duplicate_of is not None else State.FAILED
            parts.ledger.transition(row, after, event="recovered", destination=row.destination)
        else:
            return False  # KEEP, or SETTLE_*: the status poller's settle pass moves those
    except StaleRowError:
        return False  # another process moved it on meanwhile: nothing left to mend
    log.info("recover.row", recording_id=row.recording_id, job_id=row.job_id, step=str(step))
    return True


ALL_LAGGING = (State.ACCEPTED, State.UPLOADED, State.CLAIMED, State.UPLOADING)
# While running, uploaded rows are the settle pass's (only their job's end moves them); the others are few.
LAGGING_WHILE_RUNNING = (State.ACCEPTED, State.CLAIMED, State.UPLOADING)


def recover(
    parts: Parts,
    log: Any,
    in_flight: Callable[[Row], bool] = lambda row: False,
    states: tuple[State, ...] = ALL_LAGGING,
) -> int:
    """Every row that may lag behind its files (accepted, uploaded, and open rows whose failure or duplicate
    was decided), mended; ``in_flight`` rows, which a worker of ours is moving right now, are left alone."""
    changed = 0
    if states == ALL_LAGGING:  # at start
        parts.folders.tidy_put_backs()
    for state in states:
        for row in parts.ledger.rows(state=state):
            if state in (State.CLAIMED, State.UPLOADING) and row.destination is None:
                continue
            if not in_flight(row):
                changed += mend(parts, row, log)
    return changed


def other_instances(parts: Parts) -> Iterator[Path]:
    work = parts.folders.work
    return (d for d in work.parent.glob("*") if d.is_dir() and d != work and not d.name.startswith("."))
