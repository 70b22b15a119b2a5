"""A crash at every effect: for each k, a journey dies before its k-th effect, restarts, and settles.

After the restart nothing is lost, nothing is left in limbo, nothing whose job id was committed is sent
again, and every upload's metadata belongs to its own audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.digests import content_digest
from support.fakes import Crash, CrashAt
from support.world import World

from vocwatch.core.journey import DoneAction
from vocwatch.core.states import FINAL, Stage, State
from vocwatch.edges.effects import listening
from vocwatch.edges.ledger_pg import PgLedger

DROPS = [("a.wav", "rec-a", b"RIFF" + b"a" * 300), ("b.wav", "rec-b", b"RIFF" + b"b" * 500)]


def _wav(body: bytes) -> bytes:
    # A minimal well-formed header is not needed for the pipeline's head check: RIFF....WAVE
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


CONTENTS = {name: _wav(body) for name, _, body in DROPS}


def _run(world: World, crash: CrashAt | None) -> None:
    """Drop both pairs and journey each, with ``crash`` listening (it may end the run early)."""
    world.start()
    for name, rid, _ in DROPS:
        world.drop(name, rid, CONTENTS[name])
    try:
        with listening(crash or CrashAt()):
            for pair in world.ready():
                claimed = world.claim(pair)
                assert claimed is not None
                world.journey(claimed)
    except Crash:
        pass
    world.crash()


def _settle(world: World) -> None:
    """Restart and do what the daemon would, until nothing is left to do."""
    for _ in range(3):
        world.start()
        world.take_everything()
        world.poll()  # done_after = "completed": every job completes, uploaded/ moves on
        world.crash()


def _check(world: World) -> None:
    ids = {name: rid for name, rid, _ in DROPS}
    by_sha = {}
    for name, content in CONTENTS.items():
        by_sha[content_digest(content)] = ids[name]
    # Nothing in limbo: the inbox and work/ are empty, every row is final.
    assert world.files("inbox") == []
    assert world.files("work") == []
    world.start()
    rows = world.rows()
    world.crash()
    assert rows and all(r.state in FINAL for r in rows), [(r.recording_id, r.state) for r in rows]
    if world.done_action == DoneAction.DELETE:
        # Nothing kept and nothing lost: done/ stays empty, and each recording has a row that ended in done
        # with its job id and digest (it reached Crescendo), its files deleted.
        assert world.files("done") == [] and world.files("uploaded") == [], world.files("done")
        ended = {r.sha256 for r in rows if r.state == State.DONE and r.job_id}
        assert ended == set(by_sha), rows
        for row in rows:
            if row.job_id is not None:
                sent = [r for r in world.uploader.received if r.digest == row.sha256]
                assert sent[-1].job_id == row.job_id, (row.recording_id, [s.job_id for s in sent])
        return
    # Nothing lost: each recording is in done/ exactly once, whole, beside its own sidecar.
    done = world.contents("done")
    assert sorted(done.values()) == sorted(by_sha), done
    for audio in done:
        sidecar = world.root / "done" / (Path(audio).stem + ".json")
        assert json.loads(sidecar.read_text())["id"] == by_sha[done[audio]]
    # Every upload's metadata belongs to its own audio.
    for got in world.uploader.received:
        assert got.metadata["id"] == by_sha[got.digest]
    # Nothing whose job id was committed is sent again: the committed job is the last one issued.
    for row in rows:
        if row.job_id is not None:
            sent = [r for r in world.uploader.received if r.digest == row.sha256]
            assert sent[-1].job_id == row.job_id, (row.recording_id, [s.job_id for s in sent])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.fleet)])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The ledger under test: None for the SQLite file, else a fresh fleet database's URL."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("action", list(DoneAction), ids=["move", "delete"])
@pytest.mark.parametrize("require_sidecar", [True, False], ids=["sidecar-required", "lone-allowed"])
@pytest.mark.parametrize("stage", [Stage.DONE, Stage.UPLOADED], ids=["done-after-accepted", "done-after-completed"])
def test_a_crash_at_every_effect_loses_nothing_and_resends_nothing_committed(
    tmp_path: Path, stage: Stage, require_sidecar: bool, action: DoneAction, backend: str | None
) -> None:
    def world(name: str) -> World:
        # One schema per world in the fleet database: each k starts from an empty ledger.
        return World(
            tmp_path / name,
            done_stage=stage,
            require_sidecar=require_sidecar,
            done_action=action,
            ledger_url=backend,
            pg_schema=name,
        )

    counter = CrashAt()
    _run(world("count"), counter)
    total = counter.count
    assert total > 20  # renames, links, unlinks, fsyncs, commits and sends of two journeys
    for k in range(total + 1):
        world_k = world(f"k{k}")
        _run(world_k, CrashAt(k))
        _settle(world_k)
        _check(world_k)
    if backend is not None:  # every open row was let go or finished: nothing held by a gone process
        book = PgLedger(backend, world_k.clock, schema=f"k{total}")
        assert all(r.holder is None or r.state not in ("claimed", "uploading") for r in book.iter_all())
        book.close()
