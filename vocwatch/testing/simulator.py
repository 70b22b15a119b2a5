"""A Crescendo-compatible VOC API on loopback, with injectable faults, for the demo, the tests and staging.

It validates uploads as the contract says (bearer key in the header or the ``bearer_token`` query parameter,
tenant, metadata with a valid ``id``, mp3 or wav, 25 MB), answers 202 with a job id, and moves each job from
``started`` to ``completed``. Its own log lines (a client gone mid-request, the access log) are JSON on stderr.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit

from vocwatch.testing.form import Received, TruncatedError, discard, read_form, validate

__all__ = ["Faults", "Received", "SimState", "Simulator"]

MAX_BYTES = 25 * 1024 * 1024
TENANTS = "/api/v1/voc/tenants/"
UPLOAD_PATH = TENANTS + "{tenant}/recording"


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
    fail_first: int = 0  # the first N authorized uploads get error_status (a retry then succeeds)


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
    access_log: bool = False  # one JSON line per request on ``log``
    log: TextIO | None = None  # None: sys.stderr at the time of writing
    received: list[Received] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    failed_first: int = 0
    # The latest requests' targets as sent (bearer_token values masked), for tests of what a client sends;
    # bounded, so a staging server running for weeks does not grow with it.
    seen: deque[str] = field(default_factory=lambda: deque(maxlen=100_000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # Job ids are unique across restarts: this run's start time and a random part, then a counter.
        self.run_id = f"{int(time.time()):x}{secrets.token_hex(4)}"

    def unauthorized_for(self, seconds: float) -> None:
        self.faults.unauthorized_until = time.monotonic() + seconds

    def emit(self, event: str, **fields: Any) -> None:
        """One JSON log line of the simulator's own."""
        out = self.log or sys.stderr
        out.write(json.dumps({"event": event, **fields}) + "\n")
        out.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the reply is two writes (headers, body): no 40 ms delayed-ACK stall
    server: _Server
    route = ""  # the request's path without its query

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return None  # the stdlib's lines are not ours: the access log (log_request) is, on request

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        state = self.server.state
        if state.access_log:
            state.emit(
                "simulate.request",
                client=self.client_address[0],
                method=self.command,
                path=_masked(self.path),
                status=int(code) if isinstance(code, int) else code,
            )

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TruncatedError as exc:
            self.close_connection = True  # nobody is left to answer
            self.server.state.emit(
                "simulate.client_dropped",
                client=self.client_address[0],
                method=self.command,
                path=_masked(self.path),
                error=str(exc),
            )

    # -- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._safely(self._dispatch)

    def do_POST(self) -> None:
        self._safely(self._dispatch)

    def __getattr__(self, name: str) -> Any:
        # The stdlib looks up do_<METHOD> for whatever method a client sends (PUT, TRACE, QUERY, ...).
        if name.startswith("do_"):
            return self.do_GET
        raise AttributeError(name)

    def _dispatch(self) -> None:
        """A path the contract lists answers any other method 405 with an Allow header, as HTTP says."""
        allow = self._allowed()
        if allow is not None and self.command != allow:
            length = self._length()
            if length is None:
                self.close_connection = True
            else:
                discard(self.rfile, length)
            return self._error(
                405, "MethodNotAllowed", f"{self.command} is not allowed here; use {allow}", {"Allow": allow}
            )
        if self.command == "POST":
            return self._post()
        if self.command == "GET":
            return self._get()
        self.close_connection = True  # an unknown path, with a method whose body we do not read
        return self._error(404, "NotFound", "Resource not found")

    def _allowed(self) -> str | None:
        """The one method the contract lists for this path; None for a path it does not know."""
        path = self.route
        if path in ("/", "/health", "/_sim/received"):
            return "GET"
        if path.startswith(TENANTS):
            rest = path[len(TENANTS) :].split("/")
            if len(rest) == 2 and rest[1] == "recording":
                return "POST"
            if len(rest) == 4 and rest[1] == "recording" and rest[3] == "status":
                return "GET"
        return None

    def _safely(self, handle: Callable[[], None]) -> None:
        """A bug answers the contract's 500 body (and logs its traceback); a client gone is left to the caller."""
        state = self.server.state
        self.route = urlsplit(self.path).path
        with state.lock:
            state.seen.append(_masked(self.path))
        try:
            handle()
        except (TruncatedError, ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            state.emit("simulate.error", path=_masked(self.path), error=repr(exc), traceback=traceback.format_exc())
            self.close_connection = True
            self._json(500, {"message": "Internal Server Error"})

    def _get(self) -> None:
        state = self.server.state
        path = self.route
        if path == "/":
            return self._json(200, {"name": "platform-api-service", "version": "1.6.0"})
        if path == "/health":
            return self._json(200, {"status": "ok"})
        if path == "/_sim/received":
            with state.lock:
                items = [r.__dict__ for r in state.received]
            return self._json(200, {"received": items, "requests": state.requests})
        prefix = UPLOAD_PATH.format(tenant=state.tenant) + "/"
        if path.startswith("/api/v1/voc/tenants/"):
            if not self._authorized():
                return None
            if not path.startswith(prefix) or not path.endswith("/status"):
                return self._error(404, "NotFound", "Resource not found")
            job_id = path[len(prefix) : -len("/status")]
            job = self._job(job_id)
            if job is None:
                return self._error(404, "NotFound", f"job {job_id} not found")
            return self._json(200, job)
        return self._error(404, "NotFound", "Resource not found")

    def _post(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests += 1
            roll_drop, roll_error = state.rng.random(), state.rng.random()
        length = self._length()
        if length is None:
            self.close_connection = True  # the body's end is unknown: the connection cannot be reused
            return self._error(400, "BadRequest", "Content-Length must be a number of bytes")
        if self.route != UPLOAD_PATH.format(tenant=state.tenant):
            discard(self.rfile, length)
            if self.route.startswith("/api/v1/voc/tenants/") and self._authorized():
                return self._error(404, "NotFound", "tenant not found")
            return None if self.close_connection else self._error(404, "NotFound", "Resource not found")
        if state.faults.latency_s:
            time.sleep(state.faults.latency_s)
        if roll_drop < state.faults.drop_rate:
            discard(self.rfile, min(length, 4096))
            self.close_connection = True
            self.connection.close()  # mid-request, no reply: the client sees a broken connection
            return None
        if state.sink:
            discard(self.rfile, length)
            return self._accept(Received("", {}, "", "", length, "", None))
        if not self._authorized(length):
            return None
        with state.lock:
            fail_first = state.failed_first < state.faults.fail_first
            state.failed_first += fail_first
        if fail_first or roll_error < state.faults.error_rate:
            discard(self.rfile, length)
            headers = {"Retry-After": state.faults.retry_after} if state.faults.retry_after else {}
            # The contract's 500 body, {"message": ...}; any other status the same shape with its own phrase.
            return self._json(state.faults.error_status, {"message": _phrase(state.faults.error_status)}, headers)
        parts = read_form(self.rfile, self.headers, length, state.max_bytes)
        if isinstance(parts, str):
            return self._error(400, "BadRequest", parts)
        problem = validate(parts, state.max_bytes)
        if isinstance(problem, str):
            return self._error(400, "BadRequest", problem)
        return self._accept(problem)

    # -- pieces --------------------------------------------------------------------------

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        return length if length >= 0 else None

    def _authorized(self, discard_bytes: int = 0) -> bool:
        """The contract's two ways to present the key: ``Authorization: Bearer KEY``, else ``?bearer_token=KEY``.
        No key and a wrong key are both 401, with different messages."""
        state = self.server.state
        header = self.headers.get("Authorization")
        if header is not None:
            scheme, _, key = header.partition(" ")
            presented = key.strip() if scheme.lower() == "bearer" and key.strip() else None
        else:
            presented = dict(parse_qsl(urlsplit(self.path).query)).get("bearer_token") or None
        if time.monotonic() < state.faults.unauthorized_until:
            message = "API key is not valid right now"
        elif presented is None:
            message = "Authorization header with Bearer token is required"
        elif not secrets.compare_digest(presented.encode(), state.api_key.encode()):
            message = "API key is not valid"
        else:
            return True
        discard(self.rfile, discard_bytes)
        self._error(401, "Unauthenticated", message)
        return False

    def _accept(self, received: Received) -> None:
        state = self.server.state
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            if key and state.honour_idempotency and key in state.by_key:
                return self._json(202, {"id": state.by_key[key]})
            job_id = f"job-voc-{state.run_id}-{len(state.jobs) + 1:06d}"
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

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"code": code, "message": message}, headers)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # a reply to HEAD has the headers of one to GET, and no body
            self.wfile.write(data)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _masked(path: str) -> str:
    """The request target with any bearer_token value masked: the key never reaches a log line."""
    parts = urlsplit(path)
    # Decoded names, as _authorized reads them: bearer%5Ftoken is bearer_token too.
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if all(k != "bearer_token" for k, _ in pairs):
        return path
    query = [(k, "[redacted]" if k == "bearer_token" else v) for k, v in pairs]
    return parts._replace(query=urlencode(query)).geturl()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SimState) -> None:
        super().__init__(address, _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (reset, broken pipe, timeout) is one line; anything else its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | TruncatedError):
            self.state.emit("simulate.client_dropped", client=client_address[0], error=f"{type(exc).__name__}: {exc}")
            return
        super().handle_error(request, client_address)


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
