"""Operating it: job status polling, done_after = completed, metrics, redaction, ledger queries."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import Spool, drop, running, start_daemon, wait_for

from vocwatch.edges.logs import redact_digits
from vocwatch.testing.simulator import Simulator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_poller_records_completion_in_the_ledger(spool: Spool, sim: Simulator, make_settings) -> None:
    with running(make_settings()):
        drop(spool.inbox, "p.wav", "poll-1")
        [row] = wait_for(lambda: [r for r in spool.rows() if r.job_status == "completed"], what="job completed")
    assert row.state == "done" and row.job_finished_at is not None and row.job_error is None


def test_done_after_completed_waits_in_uploaded_then_moves_by_job_outcome(
    spool: Spool, sim: Simulator, make_settings, capsys
) -> None:
    sim.state.complete_after_s = 0.6
    with running(make_settings(folders__done_after="completed")):
        drop(spool.inbox, "ok.wav", "job-ok")
        uploaded = spool.root / "spool" / "uploaded"
        wait_for(lambda: (uploaded / "ok.wav").exists(), what="pair waiting in uploaded/")
        assert not (spool.done / "ok.wav").exists()
        wait_for(lambda: (spool.done / "ok.wav").exists(), what="pair in done/ after completion")
        sim.state.faults.job_fail_rate = 1.0
        drop(spool.inbox, "bad.wav", "job-bad")
        wait_for(lambda: (spool.failed / "bad.error.json").exists(), what="failed job in failed/")
    error = json.loads((spool.failed / "bad.error.json").read_text())
    assert error["reason"] == "job_failed" and "unintelligible" in error["message"]
    assert spool.files(uploaded) == []
    rows = {r.recording_id: r for r in spool.rows()}
    assert rows["job-bad"].job_status == "failed" and rows["job-ok"].job_status == "completed"
    assert rows["job-bad"].state == "failed" and rows["job-ok"].state == "done"
    assert "job.failed" in capsys.readouterr().out


def test_metrics_endpoint_is_scraped(spool: Spool, sim: Simulator, make_settings) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    with running(make_settings(metrics__listen=listen)):
        drop(spool.inbox, "m.wav", "metric-1")
        wait_for(lambda: any(r.job_status == "completed" for r in spool.rows()), what="job completed")
        body = httpx.get(f"http://{listen}/metrics").text
    for line in (
        'vocwatch_uploads_total{outcome="done"} 1.0',
        'vocwatch_jobs_total{status="completed"} 1.0',
        "vocwatch_auth_paused 0.0",
        "vocwatch_queue_depth 0.0",
        "vocwatch_upload_duration_seconds_count 1.0",
    ):
        assert line in body, line
    assert "vocwatch_upload_bytes_total" in body and "vocwatch_last_success_timestamp_seconds" in body


def test_redaction_hashes_phone_numbers_in_logs(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    make_settings(log__redact=True, log__format="json")
    proc = start_daemon(tmp_path / "config.toml")
    try:
        drop(spool.inbox, "call-from-447700900123.wav", "rec-447700900123")
        wait_for(lambda: any(r.state == "done" for r in spool.rows()), what="upload")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "447700900123" not in out
    assert redact_digits("447700900123") in out
    assert redact_digits("call 447700900123") == redact_digits("call 447700900123")  # stable


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vocwatch", *args], capture_output=True, text=True, timeout=60)


def test_ledger_list_and_show_answer_did_recording_x_arrive(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    with running(make_settings()):
        drop(spool.inbox, "q1.wav", "query-1")
        drop(spool.inbox, "q2.wav", "bad id!")
        wait_for(lambda: len([r for r in spool.rows() if r.job_status or r.state == "failed"]) == 2, what="both")
    config = str(tmp_path / "config.toml")
    listed = _cli("ledger", "list", "--config", config, "--state", "done", "--since", "1h")
    assert [json.loads(line)["recording_id"] for line in listed.stdout.splitlines()] == ["query-1"]
    failed = _cli("ledger", "list", "--config", config, "--state", "failed")
    assert json.loads(failed.stdout)["error"].startswith("invalid_id")
    one = _cli("ledger", "list", "--config", config, "--recording", "query-1", "--json")
    job = json.loads(one.stdout)["job_id"]
    for ident in ("query-1", job):
        shown = _cli("ledger", "show", "--config", config, ident)
        assert shown.returncode == 0 and "query-1" in shown.stdout and job in shown.stdout
        assert "uploading" in shown.stdout and "accepted" in shown.stdout  # the history
        assert "sha256: blake3:" in shown.stdout and "(content digest: BLAKE3-256)" in shown.stdout
    assert _cli("ledger", "show", "--config", config, "nope").returncode == 1
    assert _cli("ledger", "list", "--config", config, "--since", "soon").returncode == 64


def test_status_command_prints_one_job_from_the_api(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    with running(make_settings()):
        drop(spool.inbox, "st.wav", "status-1")
        [row] = wait_for(lambda: [r for r in spool.rows() if r.job_id], what="job id")
    result = _cli("status", "--config", str(tmp_path / "config.toml"), str(row.job_id))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["id"] == row.job_id and body["recordingId"] == "status-1"
    # EX_NOINPUT (66): the job id it was given names nothing
    assert _cli("status", "--config", str(tmp_path / "config.toml"), "job-nope").returncode == 66


def test_every_recording_outcome_is_one_log_line_with_duration_and_bytes(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings(log__format="json")
    proc = start_daemon(tmp_path / "config.toml")
    try:
        drop(spool.inbox, "good.wav", "log-good")
        drop(spool.inbox, "bad.wav", "log bad")
        wait_for(lambda: len([r for r in spool.rows() if r.state in ("done", "failed")]) == 2, what="outcomes")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    outcomes = {e["file"]: e for e in events if e["event"] in ("upload.accepted", "upload.failed")}
    assert set(outcomes) == {"good.wav", "bad.wav"}
    for event in outcomes.values():
        assert event["bytes"] > 0 and event["ms"] >= 0
    assert outcomes["good.wav"]["recording_id"] == "log-good" and outcomes["good.wav"]["job_id"]
    assert outcomes["bad.wav"]["reason"] == "invalid_id"
