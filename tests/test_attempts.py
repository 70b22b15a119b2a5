"""``attempts`` counts every try of a recording, retries included: in the ledger, its export and the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Spool, drop

from vocwatch.testing.simulator import Simulator


def test_attempts_counts_each_try_when_the_api_fails_twice_then_accepts(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    sim.state.faults.fail_first, sim.state.faults.error_status = 2, 503
    make_settings(log__format="json")
    backlog = tmp_path / "retried"
    drop(backlog, "r.wav", "retried-1")
    drop(backlog, "once.mp3", "once-1")
    config = str(tmp_path / "config.toml")
    run = [sys.executable, "-m", "vocwatch"]
    up = subprocess.run([*run, "upload", "--config", config, str(backlog)], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr[-2000:]
    assert sim.state.requests == 4 and len(sim.state.received) == 2  # two 503s, then both accepted
    rows = {r.recording_id: r for r in spool.rows()}
    assert sum(r.attempts for r in rows.values()) == 4 and {r.attempts for r in rows.values()} <= {1, 2, 3}
    logged = [json.loads(line) for line in up.stderr.splitlines() if line.startswith("{")]
    accepted = {e["recording_id"]: e["attempts"] for e in logged if e["event"] == "upload.accepted"}
    assert accepted == {rid: row.attempts for rid, row in rows.items()}
    retries = [e for e in logged if e["event"] == "upload.retry"]
    assert len(retries) == 2
    exported = subprocess.run([*run, "ledger", "export", "--config", config], capture_output=True, text=True)
    listed = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {e["recording_id"]: e["attempts"] for e in listed} == {rid: row.attempts for rid, row in rows.items()}


def test_one_recording_failed_twice_has_three_attempts(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    sim.state.faults.fail_first, sim.state.faults.error_status = 2, 500
    make_settings()
    backlog = tmp_path / "one"
    drop(backlog, "a.wav", "three-tries")
    up = subprocess.run(
        [sys.executable, "-m", "vocwatch", "upload", "--config", str(tmp_path / "config.toml"), str(backlog)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr[-2000:]
    [row] = spool.rows()
    assert (row.state, row.attempts, sim.state.requests) == ("done", 3, 3)
