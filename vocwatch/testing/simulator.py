"""A Crescendo-compatible VOC API on loopback, with injectable faults, for the demo and the tests.

It validates uploads as the contract says (bearer key, tenant, metadata with a valid ``id``, mp3
or wav, 25 MB), answers 202 with a job id, and moves each job from ``started`` to ``completed``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from vocwatch.edges.validate import check_recording_id

MAX_BYTES = 25 * 1024 * 1024
UPLOAD_PATH = "/api/v1/voc/tenants/{tenant}/recording"


@dataclass
class Faults:
    """What goes wrong, and how often. Rates are probabilities per upload request."""

    error_rate: float = 0.0
    error_status: int = 503
    retry_after: str | None = None
    drop_rate: float = 0.0
    latency_s: float = 0.0
    unauthorized_until: float = 0.0  # monotonic time; 401 for every request before it
    job_fail_rate: float = 0.0


@dataclass
class Received:
    """One upload the simulator accepted: what it saw, for tests to compare."""

    job_id: str
    metadata: dict[str, Any]
    filename: str
    content_type: str
    size: int
    sha256: str
    idempotency_key: str | None


@dataclass
class SimState:
    api_key: str
    tenant: str
    complete_after_s: float = 1.0
    faults: Faults = field(default_factory=Faults)
    sink: bool = False
    honour_idempotency: bool = True
    seed: int | None = None
    max_bytes: int = MAX_BYTES
    received: list[Received] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def unauthorized_for(self, seconds: float) -> None:
        self.faults.unauthorized_until = time.monotonic() + seconds


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name = ""
        self.filename = ""
        self.content_type = ""
        self.size = 0
        self.hasher = hashlib.sha256()
        self.text = bytearray()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the reply is two writes (headers, body): no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return None  # quiet: the tests and the demo read vocwatch's logs, not ours

    # -- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/":
            return self._json(200, {"name": "platform-api-service", "version": "1.6.0"})
        if self.path == "/health":
            return self._json(200, {"status": "ok"})
        if self.path == "/_sim/received":
            with state.lock:
                items = [r.__dict__ for r in state.received]
            return self._json(200, {"received": items, "requests": state.requests})
        prefix = UPLOAD_PATH.format(tenant=state.tenant) + "/"
        if self.path.startswith("/api/v1/voc/tenants/"):
            if not self._authorized():
                return None
            if not self.path.startswith(prefix) or not self.path.endswith("/status"):
                return self._error(404, "NotFound", "Resource not found")
            job_id = self.path[len(prefix) : -len("/status")]
            job = self._job(job_id)
            if job is None:
                return self._error(404, "NotFound", f"job {job_id} not found")
            return self._json(200, job)
        return self._error(404, "NotFound", "Resource not found")

    def do_POST(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests += 1
            roll_drop, roll_error = state.rng.random(), state.rng.random()
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != UPLOAD_PATH.format(tenant=state.tenant):
            self._discard(length)
            if self.path.startswith("/api/v1/voc/tenants/") and self._authorized():
                return self._error(404, "NotFound", "tenant not found")
            return None if self.close_connection else self._error(404, "NotFound", "Resource not found")
        if state.faults.latency_s:
            time.sleep(state.faults.latency_s)
        if roll_drop < state.faults.drop_rate:
            self._discard(min(length, 4096))
            self.close_connection = True
            self.connection.close()  # mid-request, no reply: the client sees a broken connection
            return None
        if state.sink:
            self._discard(length)
            return self._accept(Received("", {}, "", "", length, "", None))
        if not self._authorized(length):
            return None
        if roll_error < state.faults.error_rate:
            self._discard(length)
            headers = {"Retry-After": state.faults.retry_after} if state.faults.retry_after else {}
            return self._json(state.faults.error_status, {"message": "Service Unavailable"}, headers)
        parts = self._parse(length)
        if isinstance(parts, str):
            return self._error(400, "BadRequest", parts)
        problem = _validate(parts, state.max_bytes)
        if isinstance(problem, str):
            return self._error(400, "BadRequest", problem)
        return self._accept(problem)

    # -- pieces --------------------------------------------------------------------------

    def _authorized(self, discard: int = 0) -> bool:
        state = self.server.state
        header = self.headers.get("Authorization", "")
        if time.monotonic() < state.faults.unauthorized_until:
            self._discard(discard)
            self._error(401, "Unauthenticated", "API key is not valid right now")
            return False
        if header != f"Bearer {state.api_key}":
            self._discard(discard)
            self._error(401, "Unauthenticated", "Authorization header with Bearer token is required")
            return False
        return True

    def _parse(self, length: int) -> dict[str, _Part] | str:
        ctype, params = parse_options_header(self.headers.get("Content-Type", ""))
        if ctype != b"multipart/form-data" or b"boundary" not in params:
            self._discard(length)
            return "Content-Type must be multipart/form-data"
        if length > self.server.state.max_bytes + 1024 * 1024:
            self._discard(length)
            return f"File too large: at most {self.server.state.max_bytes} bytes"
        parts: dict[str, _Part] = {}
        current: list[_Part] = []
        header: list[bytes] = [b"", b""]

        def begin() -> None:
            current.append(_Part())

        def header_field(data: bytes, start: int, end: int) -> None:
            header[0] += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            header[1] += data[start:end]

        def header_end() -> None:
            current[-1].headers[header[0].decode().lower()] = header[1]
            header[0], header[1] = b"", b""

        def headers_done() -> None:
            part = current[-1]
            _, disp = parse_options_header(part.headers.get("content-disposition", b""))
            part.name = disp.get(b"name", b"").decode()
            part.filename = disp.get(b"filename", b"").decode(errors="replace")
            part.content_type = part.headers.get("content-type", b"").decode()

        def data(chunk: bytes, start: int, end: int) -> None:
            part = current[-1]
            piece = chunk[start:end]
            part.size += len(piece)
            part.hasher.update(piece)
            if not part.filename and len(part.text) < 1024 * 1024:
                part.text += piece

        def end() -> None:
            parts[current[-1].name] = current[-1]

        parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": begin,
                "on_header_field": header_field,
                "on_header_value": header_value,
                "on_header_end": header_end,
                "on_headers_finished": headers_done,
                "on_part_data": data,
                "on_part_end": end,
            },
        )
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            remaining -= len(chunk)
            parser.write(chunk)
        if remaining:
            self.close_connection = True
            return "request body ended early"
        return parts

    def _accept(self, received: Received) -> None:
        state = self.server.state
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            if key and state.honour_idempotency and key in state.by_key:
                return self._json(202, {"id": state.by_key[key]})
            job_id = f"job-voc-{len(state.jobs) + 1:06d}"
            received.job_id = job_id
            received.idempotency_key = key
            state.received.append(received)
            if key:
                state.by_key[key] = job_id
            fail = state.rng.random() < state.faults.job_fail_rate
            state.jobs[job_id] = {
                "id": job_id,
                "status": "started",
                "started": int(time.time() * 1000),
                "finished": None,
                "file": f"{state.tenant}/ingest/queue/uploads/{received.filename}",
                "recordingId": received.metadata.get("id"),
                "result": None,
                "error": None,
                "_done_at": time.monotonic() + state.complete_after_s,
                "_fail": fail,
            }
        self._json(202, {"id": job_id})

    def _job(self, job_id: str) -> dict[str, Any] | None:
        state = self.server.state
        with state.lock:
            job = state.jobs.get(job_id)
            if job is None:
                return None
            if job["status"] == "started" and time.monotonic() >= job["_done_at"]:
                job["finished"] = int(time.time() * 1000)
                if job["_fail"]:
                    job["status"], job["error"] = "failed", "transcription failed: audio unintelligible"
                else:
                    job["status"], job["result"] = "completed", {"summary": "simulated"}
            return {k: v for k, v in job.items() if not k.startswith("_")}

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1024 * 1024))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"code": code, "message": message})

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _validate(parts: dict[str, _Part], max_bytes: int) -> Received | str:
    meta_part = parts.get("metadata")
    if meta_part is None:
        return "metadata is required"
    try:
        metadata = json.loads(bytes(meta_part.text).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "metadata must be a JSON string"
    if not isinstance(metadata, dict):
        return "metadata must be a JSON object"
    if check_recording_id(metadata.get("id")) is not None:
        return "metadata.id must contain only letters, numbers, dots, dashes, or underscores"
    audio = parts.get("audio") or parts.get("file")
    if audio is None or not audio.filename:
        return "audio file is required"
    ext = audio.filename.rsplit(".", 1)[-1].lower()
    if ext not in ("mp3", "wav"):
        return "Audio must be mp3 or wav"
    if audio.size > max_bytes:
        return f"File too large: at most {max_bytes} bytes"
    return Received("", metadata, audio.filename, audio.content_type, audio.size, audio.hasher.hexdigest(), None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SimState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class Simulator:
    """The simulator as an object: start on a loopback port, inspect, stop."""

    def __init__(self, state: SimState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self._server = _Server((host, port), state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="simulator", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Simulator:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
