"""The planner's structural verdict travels with the claim: the worker trusts it while the recording's
signature is the one it was made on, and checks the headers itself otherwise (a backfill, a leftover)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from support.world import World

from vocwatch.core.audio import Incomplete, Seen
from vocwatch.core.states import State
from vocwatch.edges.audio import structure_seen
from vocwatch.edges.folders import Claimed
from vocwatch.testing.samples import write_wav

# A verdict no real check of a whole WAV gives: only the planner's word can make the worker say "truncated".
CUT = Incomplete("cut inside the data chunk", present=10, declared=20)


def _claimed_with(world: World, tmp_path: Path, seen_for: str) -> Claimed:
    world.start()
    write_wav(tmp_path / "a.wav", 0.2)
    world.drop("a.wav", "rec-1", (tmp_path / "a.wav").read_bytes())
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    st = os.lstat(claimed.audio)
    signature = (st.st_size, st.st_mtime_ns, st.st_ino)
    if seen_for == "changed":
        signature = (st.st_size + 1, st.st_mtime_ns, st.st_ino)
    return dataclasses.replace(claimed, seen=Seen(signature, CUT))


def test_the_worker_takes_the_planners_verdict_while_the_signature_holds(tmp_path: Path) -> None:
    world = World(tmp_path / "w")
    claimed = _claimed_with(world, tmp_path, "same")
    assert world.journey(claimed) == "failed"
    assert world.process is not None
    (row,) = world.process.ledger.iter_all()
    assert row.state == State.FAILED and "truncated" in (row.last_error or "")


def test_the_worker_checks_again_when_the_recording_is_no_longer_as_the_planner_saw_it(tmp_path: Path) -> None:
    world = World(tmp_path / "w")
    claimed = _claimed_with(world, tmp_path, "changed")
    assert world.journey(claimed) == "accepted"


def test_structure_seen_signs_the_verdict_with_the_files_size_mtime_and_inode(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", 0.2)
    seen = structure_seen(path)
    st = os.lstat(path)
    assert isinstance(seen, Seen) and seen.signature == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert type(seen.verdict).__name__ == "Complete"
