"""Review of the failed rows for files that never formed a pair: two processes failing one lone file at once.

On a shared inbox two daemons can expire the same lone recording at the same moment. Each test plays the
second daemon's whole ``fail_unpaired`` at one effect of the first one's move (the effects seam).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path, PurePosixPath
from typing import Any, cast

import pytest
import structlog
from support.fakes import FakeClock, QueuePool

from vocwatch.core.model import Problem
from vocwatch.core.pairing import Expired, Rules
from vocwatch.core.reasons import Reason
from vocwatch.core.states import Row
from vocwatch.edges.effects import Effect, listening
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime.planner import Planner, ScanOptions
from vocwatch.runtime.pool import Pool
from vocwatch.runtime.unpaired import fail_unpaired
from vocwatch.testing.samples import write_wav

GONE = Expired((PurePosixPath("lone.wav"),), Problem(Reason.MISSING_SIDECAR, "no sidecar"))


class _Other:
    """The other daemon: at the first daemon's ``effect`` on ``target``, it fails the same file, whole."""

    def __init__(self, effect: Effect, target: Path, run: object) -> None:
        self.effect, self.target, self.run, self.done = effect, str(target), run, False

    def before(self, effect: Effect, target: str) -> None:
        if not self.done and effect == self.effect and target == self.target:
            self.done = True
            self.run()  # type: ignore[operator]


def _setup(tmp_path: Path) -> tuple[Folders, Ledger, Ledger, FakeClock]:
    clock = FakeClock()
    t = tmp_path
    folders = Folders(inbox=t / "inbox", work=t / "work", done=t / "done", failed=t / "failed", uploaded=t / "up")
    folders.ensure()
    (t / "inbox").mkdir()
    write_wav(t / "inbox" / "lone.wav", seconds=0.05)
    return folders, Ledger(t / "l.sqlite3", clock, holder="a"), Ledger(t / "l.sqlite3", clock, holder="b"), clock


@pytest.mark.parametrize(
    ("effect", "at"),
    [
        # The other daemon chose the same names before this one wrote the reason file: this one's link then
        # finds the source gone, and it deleted the reason file both wrote, beside the other's recording.
        (Effect.WRITE, "failed/lone.error.json"),
        # The other daemon moved it under the next free name while this one's link was made: this one's
        # unlink finds the source gone, and it deleted its reason file and left its link, with no row.
        (Effect.UNLINK, "inbox/lone.wav"),
    ],
)
def test_two_daemons_failing_one_lone_file_leave_every_file_in_failed_with_its_reason(
    tmp_path: Path, effect: Effect, at: str
) -> None:
    folders, mine, theirs, clock = _setup(tmp_path)
    log = structlog.get_logger("test")
    inbox = tmp_path / "inbox"
    other = _Other(effect, tmp_path / at, lambda: fail_unpaired(folders, theirs, inbox, GONE, clock, log))
    with listening(other):
        fail_unpaired(folders, mine, inbox, GONE, clock, log)
    assert other.done
    failed = tmp_path / "failed"
    audio = sorted(p.name for p in failed.iterdir() if p.suffix == ".wav")
    # Each copy in failed/ has its reason file beside it and a row that names it.
    for name in audio:
        assert (failed / (Path(name).stem + ".error.json")).exists(), sorted(os.listdir(failed))
    rows = list(mine.iter_all())
    assert sorted(Path(r.destination or "").name for r in rows) == audio, (rows, audio)


class _FullLedger(Ledger):
    """A ledger on a filesystem that filled up: the first terminal row cannot be written."""

    refused = 0

    def record_terminal(self, *args: Any, **kwargs: Any) -> Row:
        if not self.refused:
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().record_terminal(*args, **kwargs)


def test_a_ledger_that_cannot_record_one_failure_strands_no_other_lone_file(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tmp_path
    folders = Folders(
        inbox=t / "inbox", work=t / "work" / "me", done=t / "done", failed=t / "failed", uploaded=t / "up"
    )
    folders.ensure()
    (t / "inbox").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        write_wav(t / "inbox" / name, seconds=0.05)
    planner = Planner(
        folders=folders,
        ledger=_FullLedger(t / "l.sqlite3", clock, holder="me"),
        pool=cast(Pool, QueuePool(10)),
        clock=clock,
        options=ScanOptions(rules=Rules(2.0, 30.0, True), ignore=(), recursive=True, rescan_s=60),
        log=structlog.get_logger("test"),
    )
    for after in (0.0, 40.0, 40.0, 40.0):
        clock.advance(after)
        # As the planner's loop does (planner.error): what one pass raises is logged, and the loop goes on.
        with contextlib.suppress(Exception):
            planner.rescan()
            planner.step()
    # Each lone recording went to failed/ with its reason file; none was left in the inbox for ever.
    assert sorted(os.listdir(t / "inbox")) == []
    assert sorted(p.name for p in (t / "failed").iterdir()) == [
        f"{s}{tail}" for s in "abc" for tail in (".error.json", ".wav")
    ]
