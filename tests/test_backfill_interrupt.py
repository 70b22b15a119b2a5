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


def _killed_midway(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any], start: Callable[..., Any]
) -> tuple[Path, Path, Path]:
    """A backfill (``start``) killed with two uploads in flight: no chance to drain (a power cut, an OOM kill).
    Its config, its work folder (holding what it had claimed) and its backlog folder."""
    settings = make_settings(upload__workers=2)
    config = tmp_path / "config.toml"
    work = settings.folders.work_root / f"{settings.instance}-upload"
    backlog = backlog_of(tmp_path / "backlog")
    sim.state.faults.latency_s = 0.5
    first = start(config, backlog, tmp_path / "first.log")
    wait_for(lambda: sim.state.requests >= 2, what="two uploads in flight")
    first.kill()
    first.wait(timeout=30)
    assert [f for f in spool.files(work) if f.endswith(".wav")], "nothing was claimed before the kill"
    return config, work, backlog


def test_backfill_killed_midway_recovers_its_own_work_folder_at_the_next_run(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    config, work, backlog = _killed_midway(tmp_path, spool, sim, make_settings, upload)
    # A lone half whose origin was never recorded goes back to the inbox, as the daemon's leftovers do.
    (work / "orphan.json").write_text('{"id": "orphan"}')

    sim.state.faults.latency_s = 0.0
    second = upload(config, backlog, tmp_path / "second.log")
    assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
    assert spool.files(work) == [] and spool.files(backlog) == []
    assert (spool.inbox / "orphan.json").exists()
    delivered_once(spool, sim)  # the same Idempotency-Key makes a send the kill cut short count once


def test_a_killed_keep_sources_backfill_rerun_reports_no_failure_that_did_not_happen(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    # Its sources stay, so the rerun lists again what its work folder still holds: it counted those twice
    # and said "4 not" with exit 1, although every recording was delivered.
    config, _, backlog = _killed_midway(tmp_path, spool, sim, make_settings, keep_sources_upload)

    sim.state.faults.latency_s = 0.0
    second = keep_sources_upload(config, backlog, tmp_path / "second.log")
    status = second.wait(timeout=60)
    log = (tmp_path / "second.log").read_text()
    assert status == 0, log
    assert f"vocwatch upload: {len(RECORDINGS)} uploaded, 0 not" in log, log
    assert len([f for f in spool.files(backlog) if f.endswith(".wav")]) == len(RECORDINGS)  # kept
    delivered_once(spool, sim)


def test_two_folders_with_the_same_file_names_are_both_sent(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    # a/call.wav and b/call.wav: the second claim found the first still in work/, was dropped without a word,
    # and the run ended "1 uploaded, 1 not" (exit 1) with b/call.wav never sent.
    make_settings(upload__workers=2)
    sim.state.faults.latency_s = 0.3  # the first is still in flight when the second is claimed
    for folder in ("a", "b"):
        drop(tmp_path / folder, "call.wav", f"call-{folder}")
    command = [sys.executable, "-m", "vocwatch", "upload", "--no-progress", "--config", str(tmp_path / "config.toml")]
    done = subprocess.run(
        [*command, str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "vocwatch upload: 2 uploaded, 0 not" in done.stderr
    assert sorted(r.metadata["id"] for r in sim.state.received) == ["call-a", "call-b"]


def test_a_name_held_in_work_by_something_no_worker_moves_ends_the_run_naming_it(
    tmp_path: Path, spool: Spool, sim: Simulator, make_settings: Callable[..., Any]
) -> None:
    # The wait for a same-named pair to leave work/ (above) waited forever when nothing would ever move it.
    make_settings(folders__instance="bf")
    drop(tmp_path / "a", "call.wav", "call-a")
    drop(tmp_path / "a", "other.wav", "other-a")
    (spool.work / "bf-upload" / "call.wav").mkdir(parents=True)  # not a file: recovery never takes it
    command = [sys.executable, "-m", "vocwatch", "upload", "--no-progress", "--config", str(tmp_path / "config.toml")]
    done = subprocess.run([*command, str(tmp_path / "a")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "vocwatch upload: 1 uploaded, 1 not" in done.stderr, done.stderr
    assert "claim.blocked" in done.stderr and str(spool.work / "bf-upload" / "call.wav") in done.stderr
    assert [r.metadata["id"] for r in sim.state.received] == ["other-a"]
    assert (tmp_path / "a" / "call.wav").exists() and (tmp_path / "a" / "call.json").exists()


def keep_sources_upload(config: Path, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "vocwatch", "upload", "--no-progress", "--keep-sources", "--config", str(config)]
    with log.open("w") as out:
        return subprocess.Popen([*command, str(folder)], stdout=out, stderr=subprocess.STDOUT)
