"""The worker pool on its own: the real pipeline and gate around the in-memory uploader, on a fake clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakes import MemoryUploader
from support.world import World

from vocwatch.core.model import Outcome, Retry
from vocwatch.edges.folders import Claimed
from vocwatch.runtime.gate import Gate
from vocwatch.runtime.pool import Pool

WAIT_S = 10.0  # a deadline for a condition, never a pause


def _wav(tag: str) -> bytes:
    body = f"recording {tag} ".encode() * 8
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


def _gate(world: World) -> Gate:
    return Gate(world.clock, initial_backoff=1.0, max_backoff=60.0, auth_probe=30.0, rand=lambda: 1.0)


def _pool(world: World, *, workers: int, capacity: int, gate: Gate | None = None) -> Pool:
    assert world.process is not None
    return Pool(world.process.pipeline, gate or _gate(world), workers=workers, capacity=capacity, clock=world.clock)


def _claim(world: World, name: str, rid: str) -> Claimed:
    world.drop(name, rid, _wav(rid))
    pair = next(p for p in world.ready() if p.audio.name == name)
    claimed = world.claim(pair)
    assert claimed is not None
    return claimed


def _id(path: Path) -> str:
    return str(json.loads(path.read_text())["id"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    world.start()
    yield world
    world.crash()


def test_a_full_queue_refuses_the_next_pair_without_blocking(world: World) -> None:
    pool = _pool(world, workers=0, capacity=1)
    first, second = _claim(world, "a.wav", "rec-a"), _claim(world, "b.wav", "rec-b")
    assert pool.offer(first)
    assert not pool.has_room()
    assert not pool.offer(second)
    assert pool.queued == 1
    assert pool.owns(first) and not pool.owns(second)  # a refused pair is not counted as the pool's


def test_stop_puts_queued_pairs_back_and_returns_the_uploads_still_in_flight(tmp_path: Path) -> None:
    sending, answer = threading.Event(), threading.Event()

    def hold(filename: str) -> Outcome | None:
        sending.set()
        assert answer.wait(WAIT_S), "the test never let the upload answer"
        return None

    world = World(tmp_path, uploader=MemoryUploader(hold))
    world.start()
    pool = _pool(world, workers=1, capacity=2)
    pool.start()
    try:
        assert pool.offer(_claim(world, "a.wav", "rec-a"))
        assert sending.wait(WAIT_S)  # the only worker is inside its upload
        assert pool.offer(_claim(world, "b.wav", "rec-b")) and pool.offer(_claim(world, "c.wav", "rec-c"))
        assert world.files("inbox") == []

        assert pool.stop(grace_s=0.0) == 1  # the fake clock never lets the grace run: a.wav is in flight

        assert world.files("inbox") == ["b.json", "b.wav", "c.json", "c.wav"]
        assert not pool.offer(_claim(world, "b.wav", "rec-b"))  # a stopped pool takes nothing
    finally:
        answer.set()
    assert pool.wait_idle(WAIT_S)
    assert world.files("done") == ["a.json", "a.wav"]  # the upload in flight finished
    world.crash()


@pytest.mark.parametrize(
    "newer",
    [("latest.wav",), ("latest.json",), ("latest.wav", "latest.json")],
    ids=["newer-audio-only", "newer-sidecar-only", "newer-pair"],
)
def test_put_back_keeps_the_pair_together_beside_a_newer_drop(world: World, newer: tuple[str, ...]) -> None:
    """Defect 2: a put-back beside a newer file of the same name takes one ``~N`` free for both of its
    names, never ``latest~1.wav`` with the newer drop's ``latest.json`` (or the reverse)."""
    pool = _pool(world, workers=0, capacity=4)
    assert pool.offer(_claim(world, "latest.wav", "rec-old"))
    world.drop("latest.wav", "rec-new", _wav("rec-new"))  # the producer writes the next one meanwhile...
    for name in ("latest.wav", "latest.json"):
        if name not in newer:  # ...and has written only part of it yet
            (world.inbox / name).unlink()

    pool.stop(grace_s=0.0)

    assert world.files("inbox") == sorted([*newer, "latest~1.json", "latest~1.wav"])
    assert _id(world.inbox / "latest~1.json") == "rec-old"
    assert (world.inbox / "latest~1.wav").read_bytes() == _wav("rec-old")
    if "latest.json" in newer:
        assert _id(world.inbox / "latest.json") == "rec-new"


def test_a_probe_that_raises_frees_the_gate_for_the_next_attempt(tmp_path: Path) -> None:
    calls: list[str] = []

    def blow_up_once(filename: str) -> Outcome | None:
        calls.append(filename)
        if len(calls) == 1:
            raise RuntimeError("the probe blew up")
        return None

    world = World(tmp_path, uploader=MemoryUploader(blow_up_once))
    world.start()
    gate = _gate(world)
    gate.report(Retry("HTTP 503"))  # the gate is open: the next attempt is a half-open probe
    world.clock.advance(60.0)
    pool = _pool(world, workers=1, capacity=2, gate=gate)
    pool.start()
    try:
        assert pool.offer(_claim(world, "a.wav", "rec-a"))
        assert pool.wait_idle(WAIT_S)  # the probe raised; the worker survived it
        assert world.files("work/host-1") == ["a.json", "a.wav"]  # left for recovery
        assert pool.offer(_claim(world, "b.wav", "rec-b"))
        assert pool.wait_idle(WAIT_S), "the next attempt waited for a probe that had ended"
        assert world.files("done") == ["b.json", "b.wav"]
        assert not gate.state().open
    finally:
        pool.stop(grace_s=0.0)
        world.crash()
