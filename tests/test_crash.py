"""Crash safety and graceful shutdown, with the daemon as a real process killed for real."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from conftest import Spool, wait_for
from test_delivery import _fill

from vocwatch.testing.simulator import Simulator

LIMBO = {"claimed", "uploading", "accepted", "released"}


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vocwatch", "run", "--config", str(config)], stdout=out, stderr=out
        )


def _done_count(spool: Spool) -> int:
    return sum(r.state == "done" for r in spool.rows())


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_sigkill_at_random_points_loses_nothing_and_repeats_only_in_flight(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    workers = 4
    shas = _fill(spool.inbox, 200)
    sim.state.honour_idempotency = False  # count every repeat the server sees
    sim.state.faults.latency_s = 0.01  # so that a kill finds uploads on the wire
    make_settings(upload__workers=workers, watch__settle_seconds=0)
    config, log = tmp_path / "config.toml", tmp_path / "daemon.log"
    rng = random.Random(20261125)
    kills = 0
    for _ in range(3):
        target = sim.state.requests + rng.randint(15, 45)
        proc = _start(config, log)
        wait_for(lambda t=target: sim.state.requests >= t, timeout=60, what=f"{target} requests before the kill")
        proc.kill()
        proc.wait(timeout=10)
        kills += 1
    proc = _start(config, log)
    wait_for(lambda: _done_count(spool) == 200, timeout=120, what="all 200 done after restarts")
    assert _stop(proc) == 0, log.read_text()[-3000:]

    rows = spool.rows()
    assert {r.recording_id for r in rows if r.state == "done"} == set(shas)
    assert not [r for r in rows if r.state in LIMBO]
    assert spool.files(spool.inbox) == [] and spool.files(spool.work) == []
    assert len(spool.files(spool.done)) == 400
    receipts: dict[str, list[str]] = defaultdict(list)
    for got in sim.state.received:
        assert got.sha256 == shas[got.metadata["id"]]  # complete, never half-uploaded
        receipts[got.metadata["id"]].append(got.job_id)
    ledger_job = {r.recording_id: r.job_id for r in rows}
    # A resend is only ever of an upload whose job id was not yet committed: the committed one is the last.
    assert all(ledger_job[rid] == jobs[-1] for rid, jobs in receipts.items())
    repeats = len(sim.state.received) - 200
    assert 0 <= repeats <= kills * workers


def test_sigterm_finishes_in_flight_puts_the_rest_back_and_exits_zero(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    _fill(spool.inbox, 20)
    sim.state.faults.latency_s = 0.5
    grace = 5.0
    make_settings(upload__workers=2, upload__shutdown_grace_seconds=grace, watch__settle_seconds=0)
    config, log = tmp_path / "config.toml", tmp_path / "daemon.log"
    proc = _start(config, log)
    wait_for(lambda: sim.state.requests >= 3, timeout=30, what="uploads in flight")
    started = time.monotonic()
    assert _stop(proc) == 0, log.read_text()[-3000:]
    assert time.monotonic() - started < grace + 2
    rows = spool.rows()
    assert not [r for r in rows if r.state in ("uploading", "accepted", "claimed")]
    assert spool.files(spool.work) == []
    first_run = _done_count(spool)
    assert 0 < first_run < 20
    assert len(spool.files(spool.inbox)) == 2 * (20 - first_run)

    sim.state.faults.latency_s = 0.0
    proc = _start(config, log)
    wait_for(lambda: _done_count(spool) == 20, timeout=60, what="restart completes the rest")
    assert _stop(proc) == 0
    assert len(sim.state.received) == 20
