"""The whole path: a pair dropped in the inbox reaches Crescendo (the simulator), done/ and the ledger."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import Spool, drop, running, wait_for

from vocwatch.testing.simulator import Simulator


def _settled(spool: Spool, n: int) -> list:  # type: ignore[type-arg]
    rows = spool.rows()
    return rows if len([r for r in rows if r.state in ("done", "failed", "duplicate")]) >= n else []


def test_wav_and_mp3_pairs_reach_done_with_job_ids_in_ledger(spool: Spool, sim: Simulator, make_settings) -> None:
    with running(make_settings()):
        drop(spool.inbox, "call-1.wav", "call-1")
        drop(spool.inbox, "call-2.MP3", "call-2")
        rows = wait_for(lambda: _settled(spool, 2), what="two recordings settled")
    assert {r.recording_id: r.state for r in rows} == {"call-1": "done", "call-2": "done"}
    jobs = {r.job_id for r in rows}
    assert jobs == {r.job_id for r in sim.state.received}
    assert all(j and j.startswith("job-voc-") for j in jobs)
    assert spool.files(spool.done) == ["call-1.json", "call-1.wav", "call-2.MP3", "call-2.json"]
    assert spool.files(spool.inbox) == []
    assert all(r.attempts == 1 and r.size > 0 and r.sha256.startswith("blake3:") for r in rows)


def test_simulator_receives_exactly_the_dropped_bytes_and_metadata(spool: Spool, sim: Simulator, make_settings) -> None:
    audio, side = drop(spool.inbox, "sub/dir/agent 7 – call.wav", "rec-7", agent="7", size=300_000)
    sent_bytes = audio.read_bytes()
    sent_meta = json.loads(side.read_text())
    with running(make_settings()):
        wait_for(lambda: _settled(spool, 1), what="recording settled")
    [got] = sim.state.received
    assert got.sha256 == hashlib.sha256(sent_bytes).hexdigest()
    assert got.size == len(sent_bytes)
    assert got.metadata == sent_meta
    assert got.filename == "agent 7 – call.wav"
    assert got.content_type == "audio/wav"
    assert (spool.done / "sub/dir/agent 7 – call.wav").read_bytes() == sent_bytes


def test_pair_already_in_inbox_at_startup_is_taken(spool: Spool, sim: Simulator, make_settings) -> None:
    drop(spool.inbox, "2026/11/25/early.mp3", "early")
    with running(make_settings()):
        [row] = wait_for(lambda: _settled(spool, 1), what="early pair settled")
    assert row.state == "done" and row.recording_id == "early"
    assert (spool.done / "2026/11/25/early.mp3").exists()


def test_server_400_moves_pair_to_failed_with_reason(spool: Spool, sim: Simulator, make_settings) -> None:
    sim.state.max_bytes = 10_000  # the server's limit is lower than ours: it answers 400
    with running(make_settings()):
        drop(spool.inbox, "big.wav", "big-1", size=50_000)
        [row] = wait_for(lambda: _settled(spool, 1), what="rejected pair settled")
    assert row.state == "failed" and row.job_id is None
    assert spool.files(spool.failed) == ["big.error.json", "big.json", "big.wav"]
    error = json.loads((spool.failed / "big.error.json").read_text())
    assert error["reason"] == "rejected"
    assert error["http_status"] == 400
    assert error["server_code"] == "BadRequest"
    assert "too large" in error["server_message"]
    assert error["recording_id"] == "big-1" and error["failed_at"]
    assert "HTTP 400" in (row.last_error or "")


def test_name_taken_in_done_is_never_overwritten(spool: Spool, sim: Simulator, make_settings) -> None:
    spool.done.mkdir(parents=True)
    (spool.done / "same.wav").write_bytes(b"an older recording of the same name")
    (spool.done / "same.json").write_text("{}")
    with running(make_settings()):
        drop(spool.inbox, "same.wav", "same-2")
        wait_for(lambda: _settled(spool, 1), what="pair settled")
    assert (spool.done / "same.wav").read_bytes() == b"an older recording of the same name"
    assert spool.files(spool.done) == ["same.json", "same.wav", "same~1.json", "same~1.wav"]
    [row] = spool.rows()
    assert row.destination == str(spool.done / "same~1.wav")


def test_demo_command_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vocwatch", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 delivered, 1 refused" in result.stderr
    assert len(list((tmp_path / "demo/spool/done").rglob("*.wav"))) == 2


def test_proxy_settings_in_the_environment_are_not_taken(
    spool: Spool, sim: Simulator, make_settings, monkeypatch
) -> None:
    # A daemon must not follow whatever proxy its start-up shell had; only api.proxy / api.trust_env do that.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with running(make_settings()):
        drop(spool.inbox, "direct.wav", "direct-1")
        [row] = wait_for(lambda: _settled(spool, 1), what="upload without the proxy")
    assert row.state == "done" and row.attempts == 1
