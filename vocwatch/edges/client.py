"""The Crescendo VOC API at the network edge: one request per call, each reply classified.

No retry loop lives here; callers decide what an outcome means. The API key is read per request
from a provider (so a rotated key works without a restart) and only ever sent as a header.
"""

from __future__ import annotations

import email.utils
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar, cast
from urllib.parse import quote

import h11
import httpx
from pydantic import SecretStr

from vocwatch.core.model import Accepted, AuthProblem, Outcome, Rejected, Retry

_T = TypeVar("_T")
KeyProvider = Callable[[], SecretStr | None]
RETRYABLE = frozenset({408, 425, 429})
# Bigger chunks than httpx's 64 KiB default cut per-chunk interpreter overhead on large files.
UPLOAD_CHUNK = 1024 * 1024
_DELTA_SECONDS = re.compile(r"[0-9]+")
# A Retry-After beyond a day is a server's mistake; the gate caps the wait at upload.max_backoff_seconds anyway.
RETRY_AFTER_MAX_S = 86400.0


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    status: str
    finished_ms: int | None
    error: str | None
    raw: Mapping[str, Any]


StatusOutcome = JobStatus | Rejected | Retry | AuthProblem


class Limiter(Protocol):
    """The shared bandwidth limit (edges.throttle.Bandwidth): how many of ``wanted`` bytes may go now."""

    def acquire(self, wanted: int) -> int: ...


class _Upload:
    """Adapts an open file to httpx's multipart streaming, with larger read chunks, through the limiter."""

    def __init__(self, fh: IO[bytes], limiter: Limiter | None = None) -> None:
        self._fh = fh
        self._limiter = limiter
        self.sent_at: float | None = None  # monotonic time the body's last byte was read: the reply wait starts

    def read(self, size: int = -1) -> bytes:
        size = UPLOAD_CHUNK if size and 0 < size < UPLOAD_CHUNK else size
        if self._limiter is None:
            data = self._fh.read(size)
            if not data:
                self.sent_at = time.monotonic()
            return data
        if size is None or size < 0:
            size = UPLOAD_CHUNK
        # Only body bytes count (the multipart headers and the metadata field are not read through here),
        # and only bytes that are there: the read that finds the end must not wait for, or use up, the limit.
        here = self._fh.tell()
        left = self._fh.seek(0, 2) - here
        self._fh.seek(here)
        if left <= 0:
            self.sent_at = time.monotonic()
            return b""
        return self._fh.read(self._limiter.acquire(min(size, left)))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()


def build_http(
    *,
    workers: int,
    connect_timeout: float,
    read_timeout: float,
    verify: bool | str = True,
    trust_env: bool = False,
    proxy: str | None = None,
    tls: bool = True,
) -> httpx.Client:
    """One connection pool shared by all workers; TLS verified; no redirects followed.

    ``tls=False`` (a plain ``http://`` API): no certificate store is loaded (about 10-20 ms of start-up:
    the CA bundle parsed), since no request would use it, no redirect being followed. The context given
    instead trusts no certificate at all: an ``https://`` URL could never be reached through it unverified.
    """
    # Without TLS: a context that verifies host and chain, against an empty store.
    context: bool | str | ssl.SSLContext = verify if tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return httpx.Client(
        timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
        limits=httpx.Limits(max_connections=workers + 2, max_keepalive_connections=workers + 2),
        verify=context,
        trust_env=trust_env,
        proxy=proxy,
        follow_redirects=False,
        headers={"User-Agent": "vocwatch"},
    )


def key_problem(secret: str) -> str | None:
    """Why this key can never be sent as a header (without quoting it), or None if it can."""
    if not (secret.isascii() and secret.isprintable() and " " not in secret):
        # Such a key cannot be a header; httpx's error would quote it, so it must never be sent.
        return "the API key contains spaces, line breaks or non-ASCII characters; put it alone on one line"
    return None


class CrescendoClient:
    def __init__(
        self, *, http: httpx.Client, base_url: str, tenant_id: str, key: KeyProvider, limiter: Limiter | None = None
    ) -> None:
        self._http = http
        self._limiter = limiter
        self._base = base_url.rstrip("/")
        self._tenant = tenant_id
        self._key = key
        self._local = threading.local()  # each worker's last reply wait (upload.workers = "auto")

    def close(self) -> None:
        self._http.close()

    @property
    def upload_url(self) -> str:
        return f"{self._base}/api/v1/voc/tenants/{self._tenant}/recording"

    def _auth(self) -> dict[str, str] | AuthProblem:
        key = self._key()
        if key is None or not key.get_secret_value():
            return AuthProblem(0, "no API key found")
        secret = key.get_secret_value()
        problem = key_problem(secret)
        if problem is not None:
            return AuthProblem(0, problem)
        return {"Authorization": f"Bearer {secret}"}

    def upload(
        self,
        audio: IO[bytes],
        *,
        filename: str,
        content_type: str,
        metadata: str,
        idempotency_key: str,
    ) -> Outcome:
        """POST one recording, streamed from the open file; the reply as an Outcome value."""
        headers = self._auth()
        if isinstance(headers, AuthProblem):
            return headers
        headers["Idempotency-Key"] = idempotency_key
        audio.seek(0)
        body = _Upload(audio, self._limiter)
        self._local.wait_s = None
        try:
            response = self._http.post(
                self.upload_url,
                headers=headers,
                data={"metadata": metadata},
                files={"audio": (filename, body, content_type)},  # type: ignore[dict-item]
            )
        except (httpx.HTTPError, h11.LocalProtocolError) as exc:
            return _without(Retry(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), headers)
        if body.sent_at is not None:
            self._local.wait_s = time.monotonic() - body.sent_at
        return _without(classify_upload(response), headers)

    def reply_wait(self) -> float | None:
        """Seconds this thread's last upload waited for its reply after the body was sent (None: no reply)."""
        wait: float | None = getattr(self._local, "wait_s", None)
        return wait

    def job_status(self, job_id: str) -> StatusOutcome:
        headers = self._auth()
        if isinstance(headers, AuthProblem):
            return headers
        return _without(self._job_status(job_id, headers), headers)

    def _job_status(self, job_id: str, headers: dict[str, str]) -> StatusOutcome:
        try:
            # The id is one path segment, whatever it holds: "../x" must not reach another path with the key.
            response = self._http.get(f"{self.upload_url}/{quote(job_id, safe='')}/status", headers=headers)
        except httpx.HTTPError as exc:
            return Retry(f"{type(exc).__name__}: {exc}")
        if response.status_code == 200:
            body = _json(response)
            status = body.get("status")
            if isinstance(status, str):
                finished = body.get("finished")
                error = body.get("error")
                return JobStatus(
                    job_id,
                    status,
                    finished if isinstance(finished, int) else None,
                    error if isinstance(error, str) else None,
                    body,
                )
            return Retry(f"status reply without a status field: {response.text[:200]}")
        outcome = classify_upload(response)
        if isinstance(outcome, AuthProblem) and response.status_code == 404:
            return Rejected(404, *_error_fields(response))  # an unknown job, not a wrong tenant
        assert not isinstance(outcome, Accepted)
        return outcome  # type: ignore[return-value]

    def health(self) -> tuple[bool, str]:
        try:
            response = self._http.get(f"{self._base}/health")
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        ok = response.status_code == 200 and _json(response).get("status") == "ok"
        return ok, f"HTTP {response.status_code} {response.text[:100]}"


def classify_upload(response: httpx.Response) -> Outcome:
    """Map a reply to an Outcome: the table in the design notes, in one place."""
    status = response.status_code
    if status in (200, 201, 202):
        job = _json(response).get("id")
        if isinstance(job, str) and job:
            return Accepted(job)
        return Retry(f"HTTP {status} without a job id: {response.text[:200]}")
    code, message = _error_fields(response)
    if status in (401, 403):
        return AuthProblem(status, f"{code}: {message}")
    if status == 404:
        return AuthProblem(status, f"{code}: {message} (is api.tenant_id or api.base_url wrong?)")
    if 300 <= status < 400:
        where = response.headers.get("location", "?")
        return AuthProblem(status, f"redirected to {where}; set api.base_url to the final address")
    if status in RETRYABLE or status >= 500:
        return Retry(f"HTTP {status} {message}", retry_after(response.headers.get("retry-after")), status)
    return Rejected(status, code, message)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None for anything else.

    Only ASCII digits are seconds: ``str.isdigit`` also takes '²' or '١٢', which ``float`` refuses.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        # Long digit strings are capped before converting: int() refuses over 4300 digits.
        return RETRY_AFTER_MAX_S if len(digits) > 9 else min(RETRY_AFTER_MAX_S, float(digits))
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(RETRY_AFTER_MAX_S, max(0.0, when - (time.time() if now is None else now)))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    body = _json(response)
    code = body.get("code")
    message = body.get("message")
    return (
        code if isinstance(code, str) else f"HTTP{response.status_code}",
        message if isinstance(message, str) else (response.text[:500] or response.reason_phrase),
    )


def _without(outcome: _T, headers: Mapping[str, str]) -> _T:
    """``outcome`` with the key it was sent with replaced in every text it carries: a server or proxy that
    echoes the request's headers must not carry the key into the ledger, an error file or a log."""
    secret = headers.get("Authorization", "").removeprefix("Bearer ")
    if len(secret) < 4:
        return outcome
    clean: object = outcome
    if isinstance(outcome, Retry):
        clean = Retry(outcome.reason.replace(secret, "[redacted]"), outcome.after)
    elif isinstance(outcome, Rejected):
        clean = Rejected(
            outcome.status, outcome.code.replace(secret, "[redacted]"), outcome.message.replace(secret, "[redacted]")
        )
    elif isinstance(outcome, AuthProblem):
        clean = AuthProblem(outcome.status, outcome.message.replace(secret, "[redacted]"))
    elif isinstance(outcome, JobStatus) and outcome.error is not None:
        clean = JobStatus(
            outcome.job_id,
            outcome.status,
            outcome.finished_ms,
            outcome.error.replace(secret, "[redacted]"),
            outcome.raw,
        )
    return cast(_T, clean)


def metadata_json(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
