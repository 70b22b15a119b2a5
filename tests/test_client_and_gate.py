"""The reply table and the shared breaker, as rules: pure inputs, exact outcomes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote

import httpx
import pytest
from pydantic import SecretStr

from vocwatch.core.model import Accepted, AuthProblem, Rejected, Retry, Unsettled
from vocwatch.edges.client import RETRY_AFTER_MAX_S, CrescendoClient, classify_upload, retry_after
from vocwatch.runtime.gate import Gate, full_jitter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def _reply(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (202, {"id": "job-1"}, None, Accepted("job-1")),
        (202, {}, None, Retry("HTTP 202 without a job id: {}")),
        (400, {"code": "BadRequest", "message": "bad id"}, None, Rejected(400, "BadRequest", "bad id")),
        (413, {"code": "TooLarge", "message": "big"}, None, Rejected(413, "TooLarge", "big")),
        (422, {"code": "Unprocessable", "message": "x"}, None, Rejected(422, "Unprocessable", "x")),
        (401, {"code": "Unauthenticated", "message": "no"}, None, AuthProblem(401, "Unauthenticated: no")),
        (403, {"code": "PermissionDenied", "message": "no"}, None, AuthProblem(403, "PermissionDenied: no")),
        (408, {"message": "slow"}, None, Retry("HTTP 408 slow", None)),
        (429, {"message": "busy"}, {"Retry-After": "7"}, Retry("HTTP 429 busy", 7.0)),
        (500, {"message": "Internal Server Error"}, None, Retry("HTTP 500 Internal Server Error", None)),
        (503, {"message": "down"}, {"Retry-After": "120"}, Retry("HTTP 503 down", 120.0)),
    ],
)
def test_reply_is_classified_by_the_table(status, body, headers, expected) -> None:
    assert classify_upload(_reply(status, body, headers)) == expected


def test_404_and_redirects_are_configuration_problems_not_rejections() -> None:
    assert isinstance(classify_upload(_reply(404, {"code": "NotFound", "message": "x"})), AuthProblem)
    moved = httpx.Response(301, headers={"Location": "https://elsewhere/"})
    outcome = classify_upload(moved)
    assert isinstance(outcome, AuthProblem) and "base_url" in outcome.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("0", 0.0), ("30", 30.0), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(value, expected) -> None:
    assert retry_after(value) == expected


NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()


def _http_date(offset_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset_s, UTC), usegmt=True)


RETRY_AFTER_TABLE: list[tuple[str, str | None, float | None]] = [
    ("seconds", "120", 120.0),
    ("zero", "0", 0.0),
    ("padded", "  7 ", 7.0),
    ("leading_zeros", "007", 7.0),
    ("superscript_two", "\u00b2", None),
    ("arabic_indic_digits", "\u0661\u0662", None),
    ("fullwidth_digits", "\uff11\uff12", None),
    ("fraction", "1.5", None),
    ("negative", "-1", None),
    ("plus_sign", "+5", None),
    ("empty", "", None),
    ("blank", "   ", None),
    ("absent", None, None),
    ("garbage", "soon, maybe", None),
    ("digits_then_garbage", "12abc", None),
    ("huge_digits", "9" * 400, RETRY_AFTER_MAX_S),
    ("huge_digits_past_float", "1" + "0" * 5000, RETRY_AFTER_MAX_S),
    ("http_date_in_the_future", _http_date(90), 90.0),
    ("http_date_in_the_past", _http_date(-90), 0.0),
    ("http_date_far_future", "Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX_S),
    ("http_date_garbage", "Mon, 99 Foo 2026 99:99:99 GMT", None),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in RETRY_AFTER_TABLE], ids=[c[0] for c in RETRY_AFTER_TABLE]
)
def test_retry_after_is_only_ascii_digits_or_an_http_date_and_never_raises(
    value: str | None, expected: float | None
) -> None:
    assert retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "1" + "0" * 5000, "1.5"])
def test_an_odd_retry_after_still_counts_as_a_retry_for_the_breaker(value: str) -> None:
    # As the bytes a server sends: httpx decodes a header that is not ASCII as UTF-8.
    outcome = classify_upload(httpx.Response(503, json={"message": "down"}, headers=[(b"Retry-After", value.encode())]))
    assert isinstance(outcome, Retry) and outcome.reason == "HTTP 503 down"


def test_retry_after_http_date_counts_from_now() -> None:
    when = format_datetime(datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC), usegmt=True)
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after(when, now=now) == 30.0
    assert retry_after(when, now=now + 60) == 0.0


@pytest.mark.parametrize("failures", [1, 2, 5, 20])
def test_full_jitter_stays_within_the_capped_exponential(failures: int) -> None:
    assert full_jitter(failures, 1.0, 300.0, rand=lambda: 0.0) == 0.0
    assert full_jitter(failures, 1.0, 300.0, rand=lambda: 1.0) == min(300.0, 2.0 ** (failures - 1))


def _gate(clock: FakeClock, rand: float = 1.0) -> Gate:
    return Gate(clock, initial_backoff=1.0, max_backoff=60.0, auth_probe=30.0, rand=lambda: rand)


def test_retry_after_holds_every_worker_and_is_capped() -> None:
    clock = FakeClock()
    gate = _gate(clock)
    assert gate.acquire()
    gate.report(Retry("HTTP 503", after=20.0))
    assert gate.state().open and gate.state().reopens_in == 20.0
    gate.report(Retry("HTTP 429", after=3600.0))
    assert gate.state().reopens_in == 60.0  # capped by upload.max_backoff_seconds


def test_after_the_wait_exactly_one_worker_probes_and_its_success_reopens_for_all() -> None:
    clock = FakeClock()
    gate = _gate(clock)
    gate.report(Retry("down"))
    clock.now += 1.0
    assert gate.acquire()  # this thread is the probe
    second: list[bool] = []
    waiter = threading.Thread(target=lambda: second.append(gate.acquire()))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive()  # a second worker waits for the probe's result
    gate.report(Accepted("job"))
    waiter.join(timeout=5)
    assert second == [True] and not gate.state().open


def test_auth_problem_pauses_for_the_probe_interval_and_reports_once() -> None:
    clock = FakeClock()
    gate = _gate(clock)
    assert gate.report(AuthProblem(401, "no")) is True
    assert gate.report(AuthProblem(401, "no")) is False  # another worker's reply: already paused
    state = gate.state()
    assert state.auth_paused and state.reopens_in == 30.0


def test_a_file_that_changed_does_not_count_against_the_server() -> None:
    clock = FakeClock()
    gate = _gate(clock)
    gate.report(Unsettled("grew"))
    assert not gate.state().open


def test_stop_releases_waiting_workers() -> None:
    clock = FakeClock()
    gate = _gate(clock)
    gate.report(Retry("down", after=50.0))
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(gate.acquire()))
    waiter.start()
    gate.stop()
    waiter.join(timeout=5)
    assert results == [False]


@pytest.mark.parametrize("failures", [1_024, 1_025, 1_026, 5_000, 10**9])
def test_full_jitter_never_overflows_however_many_failures(failures: int) -> None:
    assert full_jitter(failures, 1.0, 300.0, rand=lambda: 1.0) == 300.0
    assert full_jitter(failures, 1.0, 300.0, rand=lambda: 0.0) == 0.0


def test_backoff_survives_five_thousand_consecutive_failures_with_one_prober() -> None:
    clock = FakeClock()
    draws = iter([0.0, 1.0, 0.5, 0.999] * 1250)
    gate = Gate(clock, initial_backoff=1.0, max_backoff=60.0, auth_probe=30.0, rand=lambda: next(draws))
    for n in range(1, 5_001):
        assert gate.acquire()  # this thread is the one prober once the wait has run out
        assert gate.report(Retry("HTTP 503 down")) is False
        state = gate.state()
        assert state.open and state.failures == n
        assert 0.0 <= state.reopens_in <= 60.0
        clock.now += state.reopens_in
    # Still a breaker: exactly one worker probes, the rest wait for its result.
    second: list[bool] = []
    assert gate.acquire()
    waiter = threading.Thread(target=lambda: second.append(gate.acquire()))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and second == []
    gate.report(Accepted("job"))
    waiter.join(timeout=5)
    assert second == [True] and not gate.state().open


@pytest.mark.parametrize("job_id", ["../../x", "a/b", "job?x=1", "job#frag", "%2e%2e"])
def test_a_job_id_is_one_path_segment_of_the_status_url_whatever_it_holds(job_id: str) -> None:
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"message": "not found"})

    http = httpx.Client(transport=httpx.MockTransport(reply))
    client = CrescendoClient(http=http, base_url="https://api.example", tenant_id="t", key=lambda: SecretStr("k" * 8))
    client.job_status(job_id)
    (path,) = seen
    prefix = "/api/v1/voc/tenants/t/recording/"
    assert path.startswith(prefix) and path.endswith("/status"), path
    assert unquote(path[len(prefix) : -len("/status")]) == job_id and "/" not in path[len(prefix) : -len("/status")]
