"""Shutdown never closes what a live worker uses; the watchdog pings only while every service makes progress."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pytest
from conftest import Spool, drop, running, wait_for
from structlog.testing import capture_logs
from test_notify import NotifySocket

from vocwatch.core.health import Limits, Observations, Worker, healthy, upload_limit
from vocwatch.core.model import Accepted, Outcome, Pair
from vocwatch.edges.notify import SdNotifier
from vocwatch.runtime.daemon import Daemon, build


class BlockingUploader:
    """The Uploader seam (runtime/pipeline.py): each upload blocks until ``release`` is set, sending no byte."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def upload(self, audio: IO[bytes], *, idempotency_key: str, **_: Any) -> Outcome:
        self.threads.append(threading.current_thread())
        self.entered.set()
        assert self.release.wait(timeout=60), "the test never released the upload"
        return Accepted(f"job-{idempotency_key[:12]}")


class TrickleUploader:
    """Reads the file one chunk per step the test allows: a slow upload whose bytes keep moving."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.steps = threading.Semaphore(0)
        self.reads = 0

    def upload(self, audio: IO[bytes], **_: Any) -> Outcome:
        audio.seek(0)
        while True:
            assert self.steps.acquire(timeout=60), "the test never allowed the next chunk"
            if not audio.read(self.chunk):
                return Accepted("job-trickle")
            self.reads += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


# -- DEFECT 14 (a): nothing closed under a worker that outlived the grace ----------------------------


def test_a_worker_past_the_grace_keeps_its_ledger_and_client_and_finishes_cleanly(
    spool: Spool, make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(upload__workers=1, upload__shutdown_grace_seconds=0.2, status__poll=False)
    blocker = BlockingUploader()
    with capture_logs() as logs:
        with running(settings) as daemon:
            daemon.parts.pipeline.client = blocker
            drop(spool.inbox, "call-1.wav", "call-1")
            wait_for(blocker.entered.is_set, what="the upload to start")
        # running() asked it to stop and saw run() return 0 while the upload is still blocked.
        at_stop = list(logs)
        blocker.release.set()
        for thread in blocker.threads:
            thread.join(timeout=30)
            assert not thread.is_alive()
    events = [entry["event"] for entry in at_stop]
    assert events[-1] == "daemon.stopped"
    problems = [e for e in logs if e.get("log_level") in ("error", "critical") or e.get("exc_info")]
    assert problems == []  # no "Cannot operate on a closed database" from the worker that finished late
    abandoned = [entry for entry in at_stop if entry["event"] == "daemon.abandoned"]
    assert len(abandoned) == 1 and abandoned[0].get("services") == ["pool"]
    assert [u["file"] for u in abandoned[0]["uploads"]] == ["call-1.wav"]
    assert "Idempotency-Key" in abandoned[0]["note"]
    assert (spool.done / "call-1.wav").exists()
    assert [row.state for row in spool.rows()] == ["done"]
    daemon.parts.close()  # left open at the deadline; the test is the process exit here


# -- DEFECT 14 (b): the health rule, as a table -----------------------------------------------------

NOW = 1000.0
LIMITS = Limits(loop_s=30.0, upload_s=10.0)


def worker(state: str = "idle", ago: float = 0.0, alive: bool = True) -> Worker:
    return Worker(alive, state, NOW - ago, "call.wav")  # type: ignore[arg-type]


def observed(**changes: Any) -> Observations:
    fields: dict[str, Any] = {
        "planner_alive": True,
        "planner_tick": NOW - 1,
        "poller_alive": True,
        "poller_tick": NOW - 1,
        "workers": (worker(), worker()),
        "queued": 0,
        "queue_moved": NOW - 1000,
    }
    return Observations(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "stall"),
    [
        ({}, None),
        ({"planner_alive": False}, "planner thread ended"),
        ({"planner_tick": NOW - 31}, "planner has not ticked"),
        ({"planner_tick": NOW - 30}, None),
        ({"poller_alive": False}, "status poller thread ended"),
        ({"poller_tick": NOW - 31}, "status poller has not ticked"),
        ({"poller_alive": None, "poller_tick": NOW - 10_000}, None),  # the poller is off
        ({"workers": (worker(), worker(alive=False))}, "an upload worker ended"),
        ({"workers": (worker("sending", ago=11), worker())}, "upload of call.wav shows no progress"),
        ({"workers": (worker("sending", ago=10), worker())}, None),  # its bytes moved within the limit
        ({"workers": (worker("working", ago=11), worker())}, "upload of call.wav shows no progress"),
        ({"workers": (worker("waiting", ago=10_000), worker())}, None),  # on the gate: backoff or a bad key
        ({"workers": (worker("idle", ago=10_000),)}, None),  # nothing to do is not a stall
        ({"queued": 3, "queue_moved": NOW - 11}, "3 queued but no idle worker took one"),
        ({"queued": 3, "queue_moved": NOW - 5}, None),
        ({"queued": 3, "workers": (worker("sending", ago=1), worker("sending", ago=2))}, None),  # all busy
        ({"queued": 3, "workers": (worker("waiting", ago=500), worker("waiting", ago=500))}, None),
    ],
)
def test_health_decision_table(changes: dict[str, Any], stall: str | None) -> None:
    verdict = healthy(observed(**changes), NOW, LIMITS)
    if stall is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.startswith(stall)


def test_upload_limit_covers_every_http_timeout_with_margin() -> None:
    assert upload_limit(10, 120, 120) == 376.0
    assert upload_limit(0.1, 0.1, 0.1) > 0.3


def test_a_slow_upload_whose_bytes_move_is_not_stuck_until_they_stop(
    spool: Spool, make_settings: Callable[..., Any]
) -> None:
    clock = FakeClock()
    parts = build(make_settings(upload__workers=1, api__connect_timeout_seconds=1, api__read_timeout_seconds=1), clock)
    limit = upload_limit(1, 1, 1)
    trickle = TrickleUploader(chunk=65536)
    parts.pipeline.client = trickle
    parts.folders.ensure()
    drop(spool.inbox, "slow.wav", "slow", size=600_000)
    claimed = parts.folders.claim(Pair(PurePosixPath("slow.wav"), PurePosixPath("slow.json")))
    assert claimed is not None
    parts.pool.start()
    assert parts.pool.offer(claimed)

    def verdict() -> str | None:
        workers, queued, moved = parts.pool.observe()
        obs = Observations(True, clock.now, None, clock.now, workers, queued, moved)
        return healthy(obs, clock.now, Limits(loop_s=30, upload_s=limit))

    wait_for(lambda: parts.pool.observe()[0][0].state == "sending", what="the upload to start")
    for step in range(1, 6):  # five times two thirds of the limit: longer in all than the limit allows
        clock.now += limit * 2 / 3
        trickle.steps.release()
        wait_for(lambda step=step: trickle.reads == step, what=f"chunk {step}")
        assert verdict() is None
    clock.now += limit + 1  # now no byte moves for longer than the timeouts allow
    assert verdict() is not None and "shows no progress" in str(verdict())
    for _ in range(20):
        trickle.steps.release()
    assert parts.pool.stop(grace_s=30) == 0
    parts.close()
    assert (spool.done / "slow.wav").exists()


# -- DEFECT 14 (b): WATCHDOG=1 over a real notify socket stops while a worker is stuck ---------------


def test_watchdog_pings_stop_while_a_worker_is_stuck_and_resume_after(
    tmp_path: Path, spool: Spool, make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a heartbeat every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    settings = make_settings(upload__workers=1, api__connect_timeout_seconds=0.1, api__read_timeout_seconds=0.1)
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    notifier = SdNotifier(listener.address)
    blocker = BlockingUploader()

    def after(index: int, want: Callable[[dict[str, str]], bool]) -> int | None:
        messages = [m for _, m in listener.snapshot()]
        return next((i for i in range(index, len(messages)) if want(messages[i])), None)

    try:
        with running(settings, notifier=notifier) as daemon:
            wait_for(lambda: after(0, lambda m: "WATCHDOG" in m), what="a first WATCHDOG=1")
            daemon.parts.pipeline.client = blocker
            drop(spool.inbox, "call-1.wav", "call-1")
            wait_for(blocker.entered.is_set, what="the upload to start")
            stuck = wait_for(
                lambda: after(0, lambda m: m.get("STATUS", "").startswith("unhealthy: upload of call-1.wav")),
                what="STATUS unhealthy without WATCHDOG=1",
            )
            wait_for(lambda: len(listener.snapshot()) > stuck + 5, what="five more heartbeats")
            quiet = [m for _, m in listener.snapshot()][stuck : stuck + 5]
            assert all("WATCHDOG" not in m and m["STATUS"].startswith("unhealthy: ") for m in quiet)
            blocker.release.set()
            wait_for(lambda: after(stuck, lambda m: "WATCHDOG" in m), what="WATCHDOG=1 again")
            wait_for(lambda: (spool.done / "call-1.wav").exists(), what="the upload to finish")
    finally:
        blocker.release.set()
        notifier.close()
        listener.close()


def test_a_signal_that_lands_while_the_main_thread_holds_the_stop_events_lock_still_stops_the_daemon(
    spool: Spool, sim: Any, make_settings: Callable[..., Any]
) -> None:
    """The main loop's wait holds stop_requested's own lock for a few bytecodes each tick; a handler that set
    the Event there waited on that lock for good (SIGTERM ignored, seen twice in the benchmark)."""
    daemon = Daemon(make_settings())
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    daemon.install_signal_handlers()
    try:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    returned = threading.Event()

    def interrupted_inside_the_wait() -> None:
        with daemon.stop_requested._cond:  # type: ignore[attr-defined]  # where Event.wait() holds it
            handler(signal.SIGTERM, None)
        returned.set()

    threading.Thread(target=interrupted_inside_the_wait, daemon=True).start()
    assert returned.wait(5), "the handler blocked on the lock its interrupted thread holds"
    assert daemon.run() == 0  # the signal it took ends the run before anything starts
    assert daemon.stop_requested.is_set()
