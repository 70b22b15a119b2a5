"""Delivery guarantees against a faulty server: transient errors wait, auth problems pause, no duplicates."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from conftest import Spool, drop, running, start_daemon, wait_for
from support.digests import content_digest

from vocwatch.testing.samples import write_sidecar, write_wav
from vocwatch.testing.simulator import Simulator


def _fill(inbox: Path, n: int, prefix: str = "rec") -> dict[str, str]:
    """``n`` small real pairs; returns recording id -> sha256 of the audio."""
    shas = {}
    for i in range(n):
        rid = f"{prefix}-{i:04d}"
        audio = write_wav(inbox / f"{rid}.wav", 0.05, freq=200 + i)
        write_sidecar(inbox / f"{rid}.json", rid)
        shas[rid] = hashlib.sha256(audio.read_bytes()).hexdigest()
    return shas


def _states(spool: Spool) -> dict[str, str]:
    return {r.recording_id: r.state for r in spool.rows()}


def _all_done(spool: Spool, n: int) -> bool:
    states = _states(spool)
    return len(states) >= n and all(s in ("done", "failed", "duplicate") for s in states.values())


def test_transient_errors_and_dropped_connections_never_send_to_failed(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    shas = _fill(spool.inbox, 200)
    sim.state.faults.error_rate = 0.3
    sim.state.faults.retry_after = "1"  # capped by upload.max_backoff_seconds below
    sim.state.faults.drop_rate = 0.1
    settings = make_settings(upload__workers=4, upload__max_backoff_seconds=0.05, watch__settle_seconds=0.05)
    with running(settings):
        wait_for(lambda: _all_done(spool, 200), timeout=120, what="200 recordings settled")
    assert set(_states(spool).values()) == {"done"}
    assert spool.files(spool.failed) == []
    received = {r.metadata["id"]: r.sha256 for r in sim.state.received}
    assert received == shas  # every recording arrived, complete, and once
    assert sum(r.attempts for r in spool.rows()) > 200  # the faults really happened


def test_unauthorized_period_pauses_everything_then_resumes_without_restart(
    spool: Spool, sim: Simulator, make_settings
) -> None:
    sim.state.unauthorized_for(3600)
    with running(make_settings()) as daemon:
        _fill(spool.inbox, 10)
        wait_for(lambda: daemon.parts.gate.state().auth_paused, what="auth pause")
        wait_for(lambda: sim.state.requests >= 4, what="several probes while unauthorized")
        assert spool.files(spool.failed) == [] and spool.rows() and not sim.state.received
        sim.state.faults.unauthorized_until = 0.0  # the period ends
        wait_for(lambda: _all_done(spool, 10), timeout=30, what="all done after the pause")
        assert not daemon.parts.gate.state().auth_paused
    assert set(_states(spool).values()) == {"done"}
    assert spool.files(spool.failed) == []


def test_rotated_key_file_is_read_again_without_restart(
    spool: Spool, sim: Simulator, make_settings, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("VOCWATCH_API_KEY")
    key_file = tmp_path / "api-key"
    key_file.write_text("an-old-revoked-key\n")
    with running(make_settings(api__api_key_file=key_file)) as daemon:
        drop(spool.inbox, "a.wav", "a")
        wait_for(lambda: daemon.parts.gate.state().auth_paused, what="auth pause on the old key")
        key_file.write_text(sim.state.api_key + "\n")
        wait_for(lambda: _all_done(spool, 1), timeout=15, what="upload with the rotated key")
    assert _states(spool) == {"a": "done"}


def test_uploads_carry_an_idempotency_key_of_id_and_content_digest(spool: Spool, sim: Simulator, make_settings) -> None:
    audio, _ = drop(spool.inbox, "k.wav", "rec-k")
    digest = content_digest(audio.read_bytes())
    with running(make_settings()):
        wait_for(lambda: _all_done(spool, 1), what="upload")
    assert [r.idempotency_key for r in sim.state.received] == [f"rec-k-{digest}"]
    assert [r.sha256 for r in spool.rows()] == [digest]


def test_same_id_and_content_again_is_a_duplicate_and_not_sent(spool: Spool, sim: Simulator, make_settings) -> None:
    with running(make_settings()):
        audio, _ = drop(spool.inbox, "first.wav", "rec-d")
        copy = audio.read_bytes()
        wait_for(lambda: _all_done(spool, 1), what="first upload")
        (spool.inbox / ".again.tmp").write_bytes(copy)
        (spool.inbox / ".again.tmp").rename(spool.inbox / "again.wav")
        write_sidecar(spool.inbox / "again.json", "rec-d")
        wait_for(lambda: len([r for r in spool.rows() if r.state == "duplicate"]) == 1, what="duplicate row")
    first, second = spool.rows()
    assert (first.state, second.state) == ("done", "duplicate")
    assert second.duplicate_of == first.job_id
    assert len(sim.state.received) == 1
    assert "again.wav" in spool.files(spool.done)


def test_same_id_with_different_content_is_refused_as_a_conflict(spool: Spool, sim: Simulator, make_settings) -> None:
    with running(make_settings()):
        drop(spool.inbox, "v1.wav", "rec-c")
        wait_for(lambda: _all_done(spool, 1), what="first upload")
        write_wav(spool.inbox / ".v2.tmp", 0.3, freq=999).rename(spool.inbox / "v2.wav")
        write_sidecar(spool.inbox / "v2.json", "rec-c")
        wait_for(lambda: len(spool.rows()) == 2 and spool.rows()[1].state == "failed", what="conflict")
    error = json.loads((spool.failed / "v2.error.json").read_text())
    assert error["reason"] == "conflict" and spool.rows()[0].job_id in error["message"]
    assert len(sim.state.received) == 1


def test_on_conflict_upload_sends_the_new_content(spool: Spool, sim: Simulator, make_settings) -> None:
    with running(make_settings(upload__on_conflict="upload")):
        drop(spool.inbox, "v1.wav", "rec-c")
        wait_for(lambda: _all_done(spool, 1), what="first upload")
        write_wav(spool.inbox / ".v2.tmp", 0.3, freq=999).rename(spool.inbox / "v2.wav")
        write_sidecar(spool.inbox / "v2.json", "rec-c")
        wait_for(lambda: [r.state for r in spool.rows()] == ["done", "done"], what="second upload")
    assert len(sim.state.received) == 2


def test_give_up_after_seconds_sends_a_long_outage_to_failed(spool: Spool, sim: Simulator, make_settings) -> None:
    sim.state.faults.error_rate = 1.0
    with running(make_settings(upload__give_up_after_seconds=0.5)):
        drop(spool.inbox, "g.wav", "rec-g")
        wait_for(lambda: _all_done(spool, 1), what="give up")
    assert json.loads((spool.failed / "g.error.json").read_text())["reason"] == "gave_up"


def test_auth_problem_is_logged_once_per_probe_interval_not_per_file(
    spool: Spool, sim: Simulator, make_settings, capsys
) -> None:
    sim.state.unauthorized_for(3600)
    with running(make_settings(upload__workers=4, upload__auth_probe_seconds=0.5)) as daemon:
        _fill(spool.inbox, 8)
        wait_for(lambda: daemon.parts.gate.state().auth_paused, what="auth pause")
        paused_at = time.monotonic()
        wait_for(lambda: sim.state.requests >= 6, what="probes while unauthorized")
        sim.state.faults.unauthorized_until = 0.0
        paused_for = time.monotonic() - paused_at
        wait_for(lambda: _all_done(spool, 8), timeout=30, what="resume after the probe")
    out = capsys.readouterr().out
    # One line when the pause begins, then at most one per failed probe, i.e. per 0.5 s interval.
    assert 1 <= out.count("upload.auth_paused") <= 2 + paused_for / 0.5
    assert sim.state.api_key not in out


def test_same_recording_dropped_twice_at_once_is_sent_once(spool: Spool, sim: Simulator, make_settings) -> None:
    sim.state.faults.latency_s = 0.5  # the first upload is still on the wire when the second is prepared
    audio = write_wav(spool.inbox / ".twin.tmp", 0.2, freq=321)
    data = audio.read_bytes()
    audio.unlink()
    for name in ("twin-a", "twin-b"):
        write_sidecar(spool.inbox / f"{name}.json", "rec-twin")
        (spool.inbox / f".{name}.tmp").write_bytes(data)
        (spool.inbox / f".{name}.tmp").rename(spool.inbox / f"{name}.wav")
    with running(make_settings(upload__workers=4, watch__settle_seconds=0.1)):
        wait_for(lambda: sorted(r.state for r in spool.rows()) == ["done", "duplicate"], timeout=30, what="twins")
    assert len(sim.state.received) == 1
    assert sorted(spool.files(spool.done)) == ["twin-a.json", "twin-a.wav", "twin-b.json", "twin-b.wav"]


def test_a_key_that_cannot_be_a_header_pauses_and_never_leaks(
    spool: Spool, sim: Simulator, make_settings, monkeypatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.delenv("VOCWATCH_API_KEY")
    key_file = tmp_path / "api-key"
    key_file.write_text(sim.state.api_key + "\nsecond line pasted by mistake\n")
    with running(make_settings(api__api_key_file=key_file, upload__give_up_after_seconds=0.3)) as daemon:
        drop(spool.inbox, "k.wav", "rec-key")
        wait_for(lambda: daemon.parts.gate.state().auth_paused, what="auth pause")
        wait_for(lambda: any(r.attempts >= 3 for r in spool.rows()), what="several probes")
        assert spool.files(spool.failed) == []  # a refused key never counts towards give_up_after_seconds
        key_file.write_text(sim.state.api_key + "\n")
        wait_for(lambda: _all_done(spool, 1), what="upload once the key file is fixed")
    out = capsys.readouterr().out
    assert sim.state.api_key not in out
    assert all(sim.state.api_key not in (r.last_error or "") for r in spool.rows())
    assert sim.state.requests == 1  # the broken key was never sent


def test_a_second_daemon_on_the_same_instance_refuses_to_start(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    with running(make_settings()):
        second = start_daemon(tmp_path / "config.toml")
        out, _ = second.communicate(timeout=30)
    assert second.returncode == 75, out
    assert "daemon.instance_busy" in out
