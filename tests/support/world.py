"""A spool, a real ledger (SQLite, or the fleet's PostgreSQL one with ``ledger_url``) and the real pipeline
around an in-memory uploader: one process's parts.

``start()`` is a process starting (recovery included), ``crash()`` one dying: every object is dropped, the
files and the ledger file stay. Pairs are journeyed one at a time, as a worker would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from support.digests import content_digest
from support.fakes import FakeClock, MemoryUploader, NullRecorder
from vocwatch.core.journey import DoneAction, OnConflict
from vocwatch.core.model import Pair, Retry
from vocwatch.core.pairing import classify
from vocwatch.core.states import Row, Stage
from vocwatch.edges.client import JobStatus, StatusOutcome
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.edges.ledger_pg import PgLedger
from vocwatch.edges.ledgers import LedgerStore
from vocwatch.runtime.pipeline import Pipeline, PipelineOptions, Prepared
from vocwatch.runtime.poller import StatusPoller
from vocwatch.runtime.recovery import recover

QUIET = structlog.get_logger("test.world")


@dataclass(frozen=True)
class _Answer:
    reply: StatusOutcome

    def job_status(self, job_id: str) -> StatusOutcome:
        return self.reply


@dataclass
class Process:
    folders: Folders
    ledger: LedgerStore
    pipeline: Pipeline
    holder_alive: Callable[[str], bool]

    def close(self) -> None:
        self.ledger.close()
        self.folders.unlock()


@dataclass
class World:
    root: Path
    uploader: MemoryUploader = field(default_factory=MemoryUploader)
    clock: FakeClock = field(default_factory=FakeClock)
    holder: str = "host-1"
    done_stage: Stage = Stage.DONE
    require_sidecar: bool = True
    done_action: DoneAction = DoneAction.MOVE
    process: Process | None = None
    log: Any = QUIET
    ledger_url: str | None = None  # the fleet ledger instead of ledger.sqlite3
    pg_schema: str = "vocwatch"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def stage(self, name: str) -> Path:
        return self.root / name

    def start(self) -> Process:
        folders = Folders(
            inbox=self.inbox,
            work=self.root / "work" / self.holder,
            done=self.root / "done",
            failed=self.root / "failed",
            uploaded=self.root / "uploaded",
        )
        folders.ensure()
        self.inbox.mkdir(parents=True, exist_ok=True)
        assert folders.lock()
        ledger: LedgerStore
        alive = folders.holder_alive
        if self.ledger_url is None:
            ledger = Ledger(self.root / "ledger.sqlite3", self.clock, holder=self.holder)
        else:
            pg = PgLedger(self.ledger_url, self.clock, holder=self.holder, schema=self.pg_schema)
            assert pg.acquire_lease()
            ledger, alive = pg, pg.lease_alive
        options = PipelineOptions(
            max_bytes=25 * 1024 * 1024,
            defaults={},
            on_conflict=OnConflict.FAIL,
            done_stage=self.done_stage,
            poll_initial_s=1.0,
            require_sidecar=self.require_sidecar,
            done_action=self.done_action,
        )
        pipeline = Pipeline(
            folders=folders,
            client=self.uploader,
            ledger=ledger,
            clock=self.clock,
            options=options,
            recorder=NullRecorder(),
            log=self.log,
            holder_alive=alive,
        )
        self.process = Process(folders, ledger, pipeline, alive)
        recover(self.process, QUIET)
        return self.process

    def crash(self) -> None:
        """The process dies: its objects go, its files and its ledger stay as they are on disk."""
        if self.process is not None:
            self.process.close()
            self.process = None

    def drop(self, name: str, rid: str, content: bytes) -> None:
        """A producer writes a recording and then its sidecar (each atomically, as a careful one does)."""
        for path, data in ((self.inbox / name, content), (self.inbox / (PurePosixPath(name).stem + ".json"), None)):
            tmp = path.with_name("." + path.name + ".tmp")
            tmp.write_bytes(data if data is not None else json.dumps({"id": rid}).encode())
            os.replace(tmp, path)

    def ready(self) -> list[Pair]:
        """Whole pairs in the inbox, as the planner would find them once settled."""
        names = sorted(p.name for p in self.inbox.iterdir())
        pairs = []
        for name in names:
            kind, stem = classify(name)
            if kind == "audio" and stem + ".json" in names:
                pairs.append(Pair(PurePosixPath(name), PurePosixPath(stem + ".json")))
        return pairs

    def claim(self, pair: Pair) -> Claimed | None:
        assert self.process is not None
        return self.process.folders.claim(pair)

    def journey(self, claimed: Claimed, attempts: int = 3) -> str:
        """What one worker does with one claimed pair: prepare, then send until an outcome is final."""
        assert self.process is not None
        pipe = self.process.pipeline
        prepared = pipe.prepare(claimed)
        if not isinstance(prepared, Prepared):
            return prepared
        try:
            for _ in range(attempts):
                outcome = pipe.attempt(prepared)
                if not isinstance(outcome, Retry):
                    return type(outcome).__name__.lower()
            pipe.release(prepared, "still failing; the test stops here")
            return "released"
        finally:
            pipe.done_with(prepared)

    def poll(self, answer: StatusOutcome | None = None) -> int:
        """One status-poller pass after every poll fell due: each job answers ``answer`` (completed)."""
        assert self.process is not None
        reply = answer or JobStatus("?", "completed", None, None, {})
        poller = StatusPoller(
            ledger=self.process.ledger,
            client=_Answer(reply),
            clock=self.clock,
            folders=self.process.folders,
            initial_s=1.0,
            max_s=10.0,
            factor=2.0,
            unknown_after_s=60.0,
            log=QUIET,
            holder_alive=self.process.holder_alive,
            done_action=self.done_action,
        )
        self.clock.advance(20.0)
        return poller.poll_due()

    def leftovers(self) -> list[Claimed]:
        assert self.process is not None
        return [c for c, _ in self.process.folders.claims_in_work(self.require_sidecar)]

    def take_everything(self) -> None:
        """One pass of what a running daemon does: every leftover in work/, then every pair in the inbox."""
        for claimed in self.leftovers():
            self.journey(claimed)
        for pair in self.ready():
            claimed = self.claim(pair)
            if claimed is not None:
                self.journey(claimed)

    def rows(self) -> list[Row]:
        """Every ledger row of the running process."""
        assert self.process is not None
        return list(self.process.ledger.iter_all())

    def files(self, folder: str) -> list[str]:
        base = self.root / folder
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def contents(self, folder: str) -> dict[str, str]:
        base = self.root / folder
        return {
            p.relative_to(base).as_posix(): content_digest(p.read_bytes())
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".json")
        }
