"""An interrupted ``vocwatch upload`` (a backfill): it drains like the daemon, and the next run finishes the job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Spool, drop, wait_for

from vocwatch.testing.simulator import Simulator

RECORDINGS = [f"call-{i:02d}" for i in range(10)]


def backlog_of(folder: Path) -> Path:
    for rid in RECORDINGS:
        drop(folder / "2024" / rid[-1], f"{rid}.wav", rid)
    return folder


def upload(config: Path, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "vocwatch", "upload", "--no-progress", "--config", str(config), str(folder)]
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def delivered_once(spool: Spool, sim: Simulator) -> None:
    """Every recording reached the simulator once and has exactly one done row; none is anywhere else."""
    received = Counter(r.metadata["id"] for r in sim.state.received)
    assert received == Counter(RECORDINGS)
    done = Counter(row.recording_id for row in spool.rows() if row.state == "done")
    assert done == Counter(RECORDINGS)
    assert sorted(f for f in spool.files(spool.done) if f.endswith(".wav")) == sorted(
        f"2024/{rid[-1]}/{rid}.wav" for rid in RECORDINGS
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_backfill_puts_back_and_drains_then_a_rerun_delivers_each_once(
    signum: int, tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(upload__workers=2, upload__shutdown_grace_seconds=20)
    config = tmp_path / "config.toml"
    work = settings.folders.work_root / f"{settings.instance}-upload"
    backlog = backlog_of(tmp_path / "backlog")
    sim.state.honour_idempotency = False  # a second send of the same recording would show as a second upload
    sim.state.faults.latency_s = 0.5  # slow enough that the signal lands with uploads in flight
    first = upload(config, backlog, tmp_path / "first.log")
    try:
        wait_for(lambda: sim.state.requests >= 2, what="two uploads in flight")
        first.send_signal(signum)
        status = first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    log = (tmp_path / "first.log").read_text()
    assert status == 128 + signum, log
    assert f"interrupted by {signal.Signals(signum).name}" in log
    assert any(json.loads(line).get("event") == "upload.interrupted" for line in log.splitlines() if line[:1] == "{")
    assert spool.files(work) == [], log  # nothing stranded in the backfill's own work folder
    # Each recording is either delivered (in done/) or back where it came from, never both, none lost.
    left = {Path(f).stem for f in spool.files(backlog) if f.endswith(".wav")}
    delivered = {Path(f).stem for f in spool.files(spool.done) if f.endswith(".wav")}
    assert left | delivered == set(RECORDINGS) and not left & delivered
    assert left, "the signal came too late to leave anything to put back"

    sim.state.faults.latency_s = 0.0
    second = upload(config, backlog, tmp_path / "second.log")
    assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
    assert spool.files(backlog) == [] and spool.files(work) == []
    delivered_once(spool, sim)


def test_backfill_killed_midway_recovers_its_own_work_folder_at_the_next_run(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(upload__workers=2)
    config = tmp_path / "config.toml"
    work = settings.folders.work_root / f"{settings.instance}-upload"
    backlog = backlog_of(tmp_path / "backlog")
    sim.state.faults.latency_s = 0.5
    first = upload(config, backlog, tmp_path / "first.log")
    wait_for(lambda: sim.state.requests >= 2, what="two uploads in flight")
    first.kill()  # no chance to drain: a power cut, an OOM kill
    first.wait(timeout=30)
    stranded = [f for f in spool.files(work) if f.endswith(".wav")]
    assert stranded, "nothing was claimed before the kill"
    # A lone half whose origin was never recorded goes back to the inbox, as the daemon's leftovers do.
    (work / "orphan.json").write_text('{"id": "orphan"}')

    sim.state.faults.latency_s = 0.0
    second = upload(config, backlog, tmp_path / "second.log")
    assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
    assert spool.files(work) == [] and spool.files(backlog) == []
    assert (spool.inbox / "orphan.json").exists()
    delivered_once(spool, sim)  # the same Idempotency-Key makes a send the kill cut short count once
