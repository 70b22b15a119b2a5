"""upload.workers = "auto": the pool runs max_workers threads, at most the adaptive limit of them take
pairs; the limit moves with the replies, shows in STATUS and a metric, and stopping ends every thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import drop, running, wait_for
from support.fakes import MemoryUploader
from support.world import World

from vocwatch.core import concurrency
from vocwatch.core.health import WorkerState
from vocwatch.core.model import Outcome
from vocwatch.edges.config import UploadSettings
from vocwatch.edges.folders import Claimed
from vocwatch.runtime.gate import Gate
from vocwatch.runtime.pool import Pool
from vocwatch.runtime.slots import Slots

WAIT_S = 10.0  # a deadline for a condition, never a pause


def _wav(tag: str) -> bytes:
    body = f"recording {tag} ".encode() * 8
    return b"RIFF" + len(body).to_bytes(4, "little") + b"WAVEfmt " + body


def _claim(world: World, name: str, rid: str) -> Claimed:
    world.drop(name, rid, _wav(rid))
    claimed = world.claim(next(p for p in world.ready() if p.audio.name == name))
    assert claimed is not None
    return claimed


def _until(check: Callable[[], bool]) -> bool:
    """Wait for ``check`` with a deadline (a condition, not a pause)."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.005)):
        if check():
            return True
        done.wait(0.005)
    return check()


def test_only_the_limit_of_the_workers_upload_at_once_and_the_limit_grows_with_fast_full_rounds(
    tmp_path: Path,
) -> None:
    inside, answer = threading.Semaphore(0), threading.Event()
    lock, now = threading.Lock(), {"in": 0, "most": 0}

    def hold(filename: str) -> Outcome | None:
        with lock:
            now["in"] += 1
            now["most"] = max(now["most"], now["in"])
        inside.release()
        assert answer.wait(WAIT_S)
        with lock:
            now["in"] -= 1
        return None

    world = World(tmp_path, uploader=MemoryUploader(hold))
    world.start()
    assert world.process is not None
    slots = Slots(concurrency.Rules(initial=2, maximum=8))
    gate = Gate(world.clock, initial_backoff=1.0, max_backoff=60.0, auth_probe=30.0, rand=lambda: 1.0)
    pool = Pool(world.process.pipeline, gate, workers=8, capacity=16, clock=world.clock, slots=slots)
    pool.start()
    try:
        for i in range(6):
            assert pool.offer(_claim(world, f"{i}.wav", f"rec-{i}"))
        assert inside.acquire(timeout=WAIT_S) and inside.acquire(timeout=WAIT_S)  # two uploads are in

        def parked() -> int:
            return sum(w.state == WorkerState.PARKED for w in pool.observe()[0])

        assert _until(lambda: parked() == 6)  # the other six threads wait beyond the limit of two
        assert slots.in_use == 2 and now["in"] == 2
        answer.set()  # every upload answers at once from here
        assert pool.wait_idle(WAIT_S)
    finally:
        answer.set()
        pool.stop(WAIT_S)
    world.crash()
    assert len(world.uploader.received) == 6
    # Rounds of full slots and replies as fast as the first: slow start doubled the limit, never above 8.
    assert slots.limit > 2 and slots.limit <= 8
    assert now["most"] <= 8
    assert pool.alive == 0  # the parked threads ended with the pool


def test_slots_park_beyond_the_limit_wake_as_it_grows_and_end_at_stop() -> None:
    slots = Slots(concurrency.Rules(initial=1, maximum=4, slow_start_growth=2))
    assert slots.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire()))
    waiter.start()
    assert not got  # the one slot is taken: it waits (or is about to)
    slots.observe(0.01)  # a full round of one reply, as fast as the baseline: the limit doubles to 2
    waiter.join(WAIT_S)
    assert got == [True] and slots.limit == 2
    slots.observe(0.01, status=429)
    slots.observe(0.01)  # a round of two with a 429 in it: halved
    assert slots.limit == 1
    late: list[bool] = []
    third = threading.Thread(target=lambda: late.append(slots.acquire()))
    third.start()
    slots.stop()
    third.join(WAIT_S)
    assert late == [False]


def test_workers_auto_starts_max_workers_threads_with_a_queue_to_match() -> None:
    up = UploadSettings(workers="auto", max_workers=16)
    assert up.adaptive and up.threads == 16 and up.queue_capacity == 32
    fixed = UploadSettings(workers=6)
    assert not fixed.adaptive and fixed.threads == 6


def test_the_daemon_on_auto_delivers_and_shows_its_limit_in_status_and_a_metric(
    spool: Any, make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(upload__workers="auto", upload__max_workers=12)
    with running(settings) as daemon:
        for i in range(5):
            drop(spool.inbox, f"call-{i}.wav", f"rec-{i}")
        wait_for(lambda: len(spool.files(spool.done)) == 10, what="five pairs through the real simulator")
        slots = daemon.parts.pool.slots
        assert slots is not None and 1 <= slots.limit <= 12
        assert f"concurrency {slots.limit} of 12 (auto)" in daemon.status_line()
        registry = daemon.parts.stats.registry
        assert registry.get_sample_value("vocwatch_upload_concurrency_limit") == slots.limit
        assert daemon.parts.pool.alive == 12
