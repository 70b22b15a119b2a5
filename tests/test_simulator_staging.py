"""The simulator as a staging server: its key, its 401s, bearer_token, job ids, 500s, dropped clients, access log."""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import TENANT, Spool, drop, running, wait_for

from vocwatch.cli.check import client_for
from vocwatch.core.model import Accepted
from vocwatch.edges.client import JobStatus
from vocwatch.edges.client import metadata_json as as_metadata
from vocwatch.testing.samples import pcm_tone, write_wav
from vocwatch.testing.simulator import SimState, Simulator

UPLOAD = f"/api/v1/voc/tenants/{TENANT}/recording"


@dataclass
class Served:
    """``vocwatch simulate`` as a real process: its listening line, and its stderr read line by line."""

    proc: subprocess.Popen[str]
    listening: dict[str, str]
    lines: queue.Queue[str]
    reader: threading.Thread

    @property
    def url(self) -> str:
        return self.listening["url"]

    def stderr_line(self, timeout: float = 10.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on the simulator's stderr within {timeout} s") from None

    def stop(self) -> str:
        """SIGINT, as ^C: it exits 0. Returns what is left on its stderr."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=10) == 0
        self.reader.join(timeout=10)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return "".join(rest)


@contextlib.contextmanager
def simulate(*extra: str, key_file: Path | None = None) -> Iterator[Served]:
    args = [sys.executable, "-m", "vocwatch", "simulate", "--port", "0", "--tenant", TENANT, *extra]
    if key_file is not None:
        args += ["--api-key-file", str(key_file)]
    env = {k: v for k, v in os.environ.items() if k != "VOCWATCH_API_KEY"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        yield Served(proc, json.loads(proc.stdout.readline()), lines, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_it_prints_the_key_it_accepts_at_start(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("staging-key-123\n")
    with simulate(key_file=key_file) as served:
        assert served.listening["event"] == "simulate.listening"
        assert served.listening["api_key"] == "staging-key-123"
        assert served.listening["api_key_from"] == str(key_file)
        health = httpx.get(f"{served.url}/health")
        assert health.json() == {"status": "ok"}
        assert served.stop() == ""  # no access log unless asked for
    with simulate() as default:
        assert (default.listening["api_key"], default.listening["api_key_from"]) == ("sim-key", "the default")
        default.stop()


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm_tone(0.2, 440.0)[:3200])
    return out.getvalue()


def _status(sim: Simulator, *, params: dict[str, str] | None = None, **headers: str) -> httpx.Response:
    return httpx.get(f"{sim.url}{UPLOAD}/job-voc-none/status", params=params, headers=headers)


def test_a_missing_header_and_a_wrong_key_are_different_401s(sim: Simulator, api_key: str) -> None:
    missing = _status(sim)
    wrong = _status(sim, Authorization="Bearer not-the-key")
    not_bearer = _status(sim, Authorization=f"Basic {api_key}")
    for reply in (missing, wrong, not_bearer):
        assert reply.status_code == 401 and reply.json()["code"] == "Unauthenticated"
    assert missing.json()["message"] == "Authorization header with Bearer token is required"  # the contract's
    assert not_bearer.json() == missing.json()
    assert wrong.json()["message"] == "API key is not valid"
    assert _status(sim, Authorization=f"Bearer {api_key}").status_code == 404  # past the key: no such job


def test_it_accepts_the_contracts_bearer_token_query_parameter(sim: Simulator, api_key: str) -> None:
    assert _status(sim, params={"bearer_token": api_key}).status_code == 404  # authorized: the job is unknown
    wrong = _status(sim, params={"bearer_token": "nope"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "API key is not valid"
    # An upload authorized by the query parameter alone is accepted like one with the header.
    reply = httpx.post(
        f"{sim.url}{UPLOAD}",
        params={"bearer_token": api_key},
        data={"metadata": json.dumps({"id": "by-query"})},
        files={"audio": ("q.wav", _wav(), "audio/wav")},
    )
    assert reply.status_code == 202 and reply.json()["id"].startswith("job-voc-")
    assert all(api_key not in seen for seen in sim.state.seen)  # masked where the simulator keeps it


def test_vocwatch_itself_never_sends_bearer_token(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    settings = make_settings(folders__done_after="completed")
    with contextlib.closing(client_for(settings)) as client:
        assert client.health()[0]
        wav = tmp_path / "c.wav"
        write_wav(wav, 0.2)
        with wav.open("rb") as fh:
            outcome = client.upload(
                fh, filename="c.wav", content_type="audio/wav", metadata=as_metadata({"id": "c"}), idempotency_key="k"
            )
        assert isinstance(outcome, Accepted)
        assert isinstance(client.job_status(outcome.job_id), JobStatus)
    with running(settings):  # and the daemon: upload, then poll the job until it completes
        drop(spool.inbox, "d.wav", "daemon-1")
        wait_for(lambda: any(r.state == "done" for r in spool.rows()), what="done after its job completed")
    posts = [s for s in sim.state.seen if s.startswith(UPLOAD)]
    assert any(s.endswith("/status") for s in posts) and UPLOAD in posts and "/health" in sim.state.seen
    assert [s for s in sim.state.seen if "?" in s or "bearer_token" in s] == []


def _upload(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}{UPLOAD}",
        headers={"Authorization": f"Bearer {key}"},
        data={"metadata": json.dumps({"id": "restart"})},
        files={"audio": ("r.wav", _wav(), "audio/wav")},
    )


def test_job_ids_stay_unique_across_restarts(api_key: str) -> None:
    first = Simulator(SimState(api_key=api_key, tenant=TENANT)).start()
    port = int(first.url.rsplit(":", 1)[1])
    try:
        before = {_upload(first.url, api_key).json()["id"] for _ in range(3)}
    finally:
        first.stop()
    again = Simulator(SimState(api_key=api_key, tenant=TENANT), port=port).start()  # the same server, restarted
    try:
        after = {_upload(again.url, api_key).json()["id"] for _ in range(3)}
    finally:
        again.stop()
    assert len(before) == len(after) == 3 and before.isdisjoint(after)


def test_a_500_carries_the_contracts_body(sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.state.faults.fail_first, sim.state.faults.error_status = 1, 500
    injected = _upload(sim.url, api_key)
    assert injected.status_code == 500 and injected.json() == {"message": "Internal Server Error"}
    assert _upload(sim.url, api_key).status_code == 202
    sim.state.log = io.StringIO()

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the simulator")

    monkeypatch.setattr("vocwatch.testing.simulator._Handler._job", broken)  # our own code: a bug, not a fake
    crashed = httpx.get(f"{sim.url}{UPLOAD}/any/status", headers={"Authorization": f"Bearer {api_key}"})
    assert crashed.status_code == 500 and crashed.json() == {"message": "Internal Server Error"}
    [logged] = [json.loads(line) for line in sim.state.log.getvalue().splitlines()]
    assert logged["event"] == "simulate.error" and "a bug in the simulator" in logged["traceback"]


def _drop_mid_body(url: str, key: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{}\r\n'
        )


def test_a_client_that_drops_mid_body_is_one_line_not_a_traceback() -> None:
    with simulate() as served:
        key = served.listening["api_key"]
        _drop_mid_body(served.url, key)
        line = served.stderr_line()
        event = json.loads(line)
        assert event["event"] == "simulate.client_dropped" and event["method"] == "POST"
        assert "ended after" in event["error"] and event["path"] == UPLOAD
        assert _upload(served.url, key).status_code == 202  # and it serves on
        assert served.stop() == ""  # nothing more: no traceback


def test_an_access_log_on_request_with_the_key_masked() -> None:
    with simulate("--access-log") as served:
        key = served.listening["api_key"]
        httpx.get(f"{served.url}/health")
        httpx.get(f"{served.url}{UPLOAD}/j/status", params={"bearer_token": key})
        _upload(served.url, key)
        lines = [json.loads(served.stderr_line()) for _ in range(3)]
        rest = served.stop()
    assert [(e["event"], e["method"], e["status"]) for e in lines] == [
        ("simulate.request", "GET", 200),
        ("simulate.request", "GET", 404),
        ("simulate.request", "POST", 202),
    ]
    assert lines[0]["path"] == "/health" and lines[2]["path"] == UPLOAD
    assert "bearer_token=%5Bredacted%5D" in lines[1]["path"] and key not in json.dumps(lines) + rest


def test_a_method_the_contract_does_not_list_is_405_with_allow(sim: Simulator, api_key: str) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    for method, path, allow in [
        ("GET", UPLOAD, "POST"),
        ("PUT", UPLOAD, "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", f"{UPLOAD}/job-1/status", "GET"),
        ("QUERY", "/", "GET"),
    ]:
        reply = httpx.request(method, f"{sim.url}{path}", headers=auth, content=b"ignored body")
        assert (reply.status_code, reply.headers.get("allow")) == (405, allow), (method, path)
        assert reply.json()["code"] == "MethodNotAllowed"
    head = httpx.head(f"{sim.url}/health")
    assert head.status_code == 405 and head.content == b""
    assert httpx.request("PATCH", f"{sim.url}/nowhere").status_code == 404
    assert httpx.get(f"{sim.url}/health").json() == {"status": "ok"}  # the connection pool survived all that


def test_a_bearer_token_with_its_name_percent_encoded_is_masked_too(sim: Simulator, api_key: str) -> None:
    # bearer%5Ftoken is bearer_token once decoded, and the simulator accepts it: the mask must decode too.
    sim.state.access_log, sim.state.log = True, io.StringIO()
    for name in ("bearer%5Ftoken", "bearer_%74oken"):
        reply = httpx.get(f"{sim.url}{UPLOAD}/j/status?{name}={api_key}&x=1")
        assert reply.status_code == 404, reply.text  # authorized: only the job is unknown
    logged = [json.loads(line) for line in sim.state.log.getvalue().splitlines()]
    assert len(logged) == 2 and all("%5Bredacted%5D" in e["path"] for e in logged), logged
    assert api_key not in sim.state.log.getvalue() and not any(api_key in s for s in sim.state.seen)
