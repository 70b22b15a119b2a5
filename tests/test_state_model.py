"""A model of the daemon's life, run against the real core: random drops, claims, journeys, faults,
shutdowns and restarts, with the invariants checked after every step and everything settled at the end.

The World is real folders on a temporary directory, the real SQLite ledger, the real Pipeline, recovery
and poller settle pass; only the server is in memory. The model adds what the planner and the pool hold
in memory (the queue of claimed pairs) and the faults: a crash before the k-th effect (the process dies,
its queue with it) and a full disk at the k-th effect (a transient error: the pair stays in work/ and
the next rescan takes it again, the process lives on).

Every drop's audio is unique, except a deliberate duplicate (the same content and id again), so the
content says which drop a file belongs to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support.digests import content_digest
from support.fakes import LOST, Crash, CrashAt, FullDiskAt, Lost, MemoryUploader
from support.world import World

from vocwatch.core.model import Outcome, Rejected, Retry
from vocwatch.core.pairing import classify
from vocwatch.core.states import FINAL, OPEN, Row, Stage, State
from vocwatch.edges.client import JobStatus
from vocwatch.edges.effects import Listener, listening
from vocwatch.edges.folders import Claimed
from vocwatch.edges.ledger import Ledger

# Few names and ids, so that names are reused after a claim and ids meet other content (a conflict).
NAMES = ("a.wav", "b.mp3", "latest.wav")
IDS = ("rec-1", "rec-2", "rec-3")
FOLDERS = ("inbox", "work", "done", "failed", "uploaded")

# What the server answers in one journey, in turn; once the script runs out it accepts.
SCRIPTS: dict[str, list[Outcome | Lost]] = {
    "accept": [],
    "transient-then-accept": [Retry("HTTP 503")],
    "rejected": [Rejected(400, "bad_audio", "not a recording")],
    "reply-lost-then-resent": [LOST],
    "transient-until-released": [Retry("HTTP 503")] * 3,  # World.journey puts it back after 3 attempts
}
# A fault during an operation: none, a crash before effect k, or a full disk at effect k.
FAULTS = st.one_of(
    st.just(("none", 0)),
    st.tuples(st.sampled_from(["crash", "full-disk"]), st.integers(min_value=0, max_value=40)),
)


@dataclass(frozen=True)
class Drop:
    name: str
    rid: str
    content: bytes

    @property
    def sha(self) -> str:
        return content_digest(self.content)


def _content(name: str, n: int) -> bytes:
    body = f"drop {n} ".encode() * 8
    if name.endswith(".wav"):
        return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body
    return b"ID3\x04\x00\x00" + body


def _is_audio(path: Path) -> bool:
    return not path.name.startswith(".") and classify(path.name)[0] == "audio"


class DaemonModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="vocwatch-model-"))
        self.script: deque[Outcome | Lost] = deque()
        self.world = World(self.root, uploader=MemoryUploader(self._reply))
        self.drops: list[Drop] = []
        self.queue: list[Claimed] = []  # claimed pairs the planner and the pool hold in memory
        self.made = 0

    def _reply(self, filename: str) -> Outcome | Lost | None:
        return self.script.popleft() if self.script else None

    # -- set-up --------------------------------------------------------------------------

    @initialize(stage=st.sampled_from([Stage.DONE, Stage.UPLOADED]))
    def begin(self, stage: Stage) -> None:
        self.world.done_stage = stage
        self.world.start()

    # -- helpers -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.world.process is not None

    def _listener(self, fault: tuple[str, int]) -> Listener:
        kind, k = fault
        if kind == "crash":
            return CrashAt(k)
        if kind == "full-disk":
            return FullDiskAt(k)
        return CrashAt()

    def _faulty(self, fault: tuple[str, int], action: object) -> None:
        """Run ``action`` with ``fault`` listening: a crash kills the process (and its queue); a full disk
        is logged by the worker or planner, which carry on (the pair stays where it is, for the rescan)."""
        listener = self._listener(fault)
        try:
            with listening(listener):
                action()  # type: ignore[operator]
        except Crash:
            self.world.crash()
            self.queue.clear()
        except OSError:
            pass  # pool.py / planner.py: "files.move_failed", retried at the next rescan

    def _journey(self, claimed: Claimed, script: str) -> None:
        self.script = deque(SCRIPTS[script])
        try:
            self.world.journey(claimed)
        finally:
            self.script.clear()

    def _rows(self) -> list[Row]:
        if self.world.process is not None:
            return list(self.world.process.ledger.iter_all())
        ledger = Ledger(self.root / "ledger.sqlite3", self.world.clock, holder="model-check")
        try:
            return list(ledger.iter_all())
        finally:
            ledger.close()

    def _sha_of(self) -> dict[str, str]:
        return {d.sha: d.rid for d in self.drops}

    def _audio_files(self) -> list[Path]:
        return [p for folder in FOLDERS for p in (self.root / folder).rglob("*") if p.is_file() and _is_audio(p)]

    # -- the producer ----------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), rid=st.sampled_from(IDS))
    def drop(self, name: str, rid: str) -> None:
        """A new recording; its id may already be taken by other content (a conflict)."""
        stem = PurePosixPath(name).stem
        if (self.world.inbox / name).exists() or (self.world.inbox / f"{stem}.json").exists():
            return  # a producer does not overwrite a file that is still waiting in the inbox
        self.made += 1
        dropped = Drop(name, rid, _content(name, self.made))
        self.world.drop(dropped.name, dropped.rid, dropped.content)
        self.drops.append(dropped)

    @precondition(lambda self: bool(self.drops))
    @rule(data=st.data())
    def drop_again(self, data: st.DataObject) -> None:
        """Exactly the same recording and id again (under a name of its kind): a duplicate."""
        earlier = data.draw(st.sampled_from(self.drops))
        suffix = PurePosixPath(earlier.name).suffix
        name = data.draw(st.sampled_from([n for n in NAMES if n.endswith(suffix)]))
        stem = PurePosixPath(name).stem
        if (self.world.inbox / name).exists() or (self.world.inbox / f"{stem}.json").exists():
            return
        again = Drop(name, earlier.rid, earlier.content)
        self.world.drop(again.name, again.rid, again.content)
        self.drops.append(again)

    # -- the planner -----------------------------------------------------------------------

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), fault=FAULTS)
    def claim(self, data: st.DataObject, fault: tuple[str, int]) -> None:
        ready = self.world.ready()
        if not ready:
            return
        pair = data.draw(st.sampled_from(ready))

        def act() -> None:
            claimed = self.world.claim(pair)
            if claimed is not None:  # None: a pair of that name is still in work/
                self.queue.append(claimed)

        self._faulty(fault, act)

    @precondition(lambda self: self.alive)
    @rule()
    def rescan(self) -> None:
        """The planner's rescan: what lies in work/ and no worker holds is queued again."""
        queued = {c.audio for c in self.queue}
        self.queue.extend(c for c in self.world.leftovers() if c.audio not in queued)

    # -- a worker --------------------------------------------------------------------------

    @precondition(lambda self: self.alive and bool(self.queue))
    @rule(script=st.sampled_from(sorted(SCRIPTS)), fault=FAULTS)
    def journey(self, script: str, fault: tuple[str, int]) -> None:
        claimed = self.queue.pop(0)
        self._faulty(fault, lambda: self._journey(claimed, script))

    @precondition(lambda self: self.alive)
    @rule(failed=st.booleans(), fault=FAULTS)
    def poll(self, failed: bool, fault: tuple[str, int]) -> None:
        answer = JobStatus("?", "failed", 1_000, "could not transcribe", {}) if failed else None
        self._faulty(fault, lambda: self.world.poll(answer))

    # -- the process -----------------------------------------------------------------------

    @precondition(lambda self: self.alive)
    @rule(crash_at=st.one_of(st.none(), st.integers(min_value=0, max_value=10)))
    def shutdown(self, crash_at: int | None) -> None:
        """A graceful stop: the queued pairs go back to the inbox, leftovers found in work/ stay there
        (Pool.stop), then the process exits."""
        assert self.world.process is not None
        folders = self.world.process.folders

        def put_back() -> None:
            while self.queue:
                if not self.queue[0].leftover:
                    folders.release(self.queue[0])
                self.queue.pop(0)

        self._faulty(("crash", crash_at) if crash_at is not None else ("none", 0), put_back)
        self.world.crash()
        self.queue.clear()

    @rule(crash_at=st.one_of(st.none(), st.integers(min_value=0, max_value=6)))
    def restart(self, crash_at: int | None) -> None:
        """The process (re)starts, with recovery; the planner's first scan queues what lies in work/ first."""
        self.world.crash()
        self.queue.clear()
        self._faulty(("crash", crash_at) if crash_at is not None else ("none", 0), self.world.start)
        if self.alive:
            self.queue = self.world.leftovers()

    # -- after every step ------------------------------------------------------------------

    @invariant()
    def nothing_is_lost(self) -> None:
        """Every drop's audio is on disk, once: a move a crash cut short is one file under two names."""
        inodes: dict[str, set[tuple[int, int]]] = {}
        for path in self._audio_files():
            st_ = os.lstat(path)
            sha = content_digest(path.read_bytes())
            inodes.setdefault(sha, set()).add((st_.st_dev, st_.st_ino))
        want = Counter(d.sha for d in self.drops)
        have = {sha: len(found) for sha, found in inodes.items()}
        assert have == dict(want), (have, dict(want))

    @invariant()
    def every_pair_on_disk_is_together(self) -> None:
        """An audio file and the NAME.json beside it belong to the same drop, in every folder."""
        rid_of = self._sha_of()
        for path in self._audio_files():
            sidecar = path.with_name(path.stem + ".json")
            if sidecar.exists():
                sha = content_digest(path.read_bytes())
                got = json.loads(sidecar.read_text())["id"]
                assert got == rid_of[sha], f"{path.relative_to(self.root)} carries {got}, its drop is {rid_of[sha]}"

    @invariant()
    def every_upload_carries_its_own_metadata(self) -> None:
        rid_of = self._sha_of()
        for got in self.world.uploader.received:
            assert got.metadata["id"] == rid_of[got.digest], (got.filename, got.metadata)
            assert got.idempotency_key == f"{rid_of[got.digest]}-{got.digest}"

    @invariant()
    def ledger_agrees(self) -> None:
        rows = self._rows()
        received = self.world.uploader.received
        opened = Counter((r.recording_id, r.sha256) for r in rows if r.state in OPEN)
        for row in rows:
            # Nothing whose job id was committed is sent again afterwards (unless that job failed and the
            # recording was dropped again, which is how a failed recording is retried).
            if row.job_id is not None and row.state != State.FAILED:
                issued = [i for i, r in enumerate(received) if r.job_id == row.job_id]
                assert issued, f"{row.job_id} was never issued"
                again = [r for r in received[issued[0] + 1 :] if r.digest == row.sha256]
                assert not again, f"{row.recording_id} sent again after {row.job_id} was committed"
            # At most one open row per recording and content.
            assert opened[(row.recording_id, row.sha256)] <= 1, (row.recording_id, row.state)
            # A done or duplicate row points at its own file.
            if row.state in (State.DONE, State.DUPLICATE):
                assert row.destination is not None and os.path.lexists(row.destination), (row.state, row)
                with open(row.destination, "rb") as fh:
                    assert content_digest(fh.read()) == row.sha256, row

    # -- the end ---------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._settle()
            self._nothing_in_limbo()
        finally:
            self.world.crash()
            shutil.rmtree(self.root, ignore_errors=True)

    def _settle(self) -> None:
        """What the daemon does with a server that accepts, until nothing is left to do."""
        for _ in range(4):
            self.world.crash()
            self.world.start()
            for claimed in self.world.leftovers():
                self.world.journey(claimed)
            for pair in self.world.ready():
                claimed = self.world.claim(pair)
                if claimed is not None:
                    self.world.journey(claimed)
            self.world.poll()
        self.world.crash()

    def _nothing_in_limbo(self) -> None:
        self.nothing_is_lost()
        self.every_pair_on_disk_is_together()
        self.ledger_agrees()
        assert self.world.files("inbox") == [], self.world.files("inbox")
        assert self.world.files("work") == [], self.world.files("work")
        assert self.world.files("uploaded") == [], self.world.files("uploaded")
        rows = self._rows()
        assert all(r.state in FINAL for r in rows), [(r.recording_id, r.file, r.state) for r in rows]
        by_destination = {r.destination: r for r in rows}
        for path in self._audio_files():
            stage = path.relative_to(self.root).parts[0]
            row = by_destination.get(str(path))
            assert row is not None, f"no row says {path.relative_to(self.root)} is there"
            want = {State.DONE, State.DUPLICATE} if stage == "done" else {State.FAILED}
            assert row.state in want, (str(path), row.state)


DaemonModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDaemonModel = DaemonModel.TestCase
