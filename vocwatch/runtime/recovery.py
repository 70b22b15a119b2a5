"""Recovery at start-up: every row that a crash left ahead of or behind its files, put right.

Decided by core.journey.decide_row, the same rule the poller's settle pass follows; pairs in work/
are each decided by the pipeline when the planner offers them, so there is no separate code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from vocwatch.core.journey import RowSeen, RowStep, decide_row
from vocwatch.core.states import Row, State
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledger import Ledger


class Parts(Protocol):
    """What recovery works on: one process's folders and ledger."""

    @property
    def folders(self) -> Folders: ...

    @property
    def ledger(self) -> Ledger: ...


def observe(parts: Parts, row: Row) -> RowSeen:
    folders = parts.folders
    in_work = os.path.lexists(folders.work / PurePosixPath(row.file))
    destination = None
    if row.destination and os.path.lexists(row.destination):
        destination = folders.stage_of(Path(row.destination))
    mine = row.holder is None or row.holder == parts.ledger.holder or not folders.holder_alive(row.holder)
    return RowSeen(in_work=in_work, destination=destination, mine=mine)


def recover(parts: Parts, log: Any) -> int:
    """Bring the rows in ``accepted`` and ``uploaded`` up to their files; return how many changed."""
    changed = 0
    for state in (State.ACCEPTED, State.UPLOADED):
        for row in parts.ledger.rows(state=state):
            step = decide_row(row, observe(parts, row))
            if step == RowStep.MARK_DONE:
                parts.ledger.transition(row, State.DONE, event="recovered", destination=row.destination)
            elif step == RowStep.MARK_UPLOADED:
                parts.ledger.transition(row, State.UPLOADED, event="recovered", destination=row.destination)
            elif step in (RowStep.SETTLE_DONE, RowStep.SETTLE_FAILED, RowStep.SETTLE_DELETE):
                continue  # the status poller's settle pass moves these, at its first tick
            else:
                continue
            changed += 1
            log.info("recover.row", recording_id=row.recording_id, job_id=row.job_id, step=str(step))
    return changed


def other_instances(parts: Parts) -> Iterator[Path]:
    work = parts.folders.work
    return (d for d in work.parent.glob("*") if d.is_dir() and d != work)
