"""upload.bandwidth: one limiter shared by every worker, measured over 30 s on a fake clock (no wall-clock
timing): the bytes it hands out, per window, across 8 workers reading their bodies at once."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from conftest import drop, running, wait_for
from support.fakes import FakeClock

from vocwatch.core.schedule import parse_bandwidth
from vocwatch.edges.client import UPLOAD_CHUNK, _Upload
from vocwatch.edges.throttle import Bandwidth

M = 1024**2
WORKERS = 8


def _send_all(limiter: Bandwidth, bodies: list[bytes]) -> list[bytes]:
    """Each body read to its end through the limiter, as httpx reads an upload, one thread per worker."""
    got: list[bytes] = [b""] * len(bodies)

    def worker(i: int) -> None:
        reader, parts = _Upload(io.BytesIO(bodies[i]), limiter), []
        while chunk := reader.read(64 * 1024):
            parts.append(chunk)
        got[i] = b"".join(parts)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return got


def _per_window(grants: list[tuple[float, int]], start: float, end: float, width: float = 30.0) -> list[int]:
    """Bytes handed out in every ``width``-second window from ``start`` to ``end``, a second apart."""
    out, at = [], start
    while at + width <= end:
        out.append(sum(n for t, n in grants if at <= t < at + width))
        at += 1.0
    return out


def _limiter(table: str, clock: FakeClock) -> tuple[Bandwidth, list[tuple[float, int]]]:
    grants: list[tuple[float, int]] = []
    lock = threading.Lock()

    def record(at: float, n: int) -> None:
        with lock:
            grants.append((at, n))

    return Bandwidth(parse_bandwidth(table), clock, sleep_until=clock.sleep_until, on_grant=record), grants


def test_eight_workers_together_stay_within_ten_percent_over_any_30_s() -> None:
    clock = FakeClock()
    limiter, grants = _limiter("2M", clock)
    bodies = [bytes([i]) * (12 * M) for i in range(WORKERS)]  # 96 MiB: 48 s at 2 MiB/s
    start = clock.monotonic()
    assert _send_all(limiter, bodies) == bodies  # every byte, in order, for each worker
    end = max(t for t, _ in grants)
    assert end - start >= 45
    windows = _per_window(grants, start, end)
    assert windows and max(windows) <= 1.1 * 2 * M * 30, max(windows) / (2 * M * 30)
    assert min(windows) >= 0.9 * 2 * M * 30, min(windows) / (2 * M * 30)
    assert limiter.granted == sum(len(b) for b in bodies)


def test_a_timetable_switches_at_its_time_without_a_restart() -> None:
    clock = FakeClock(datetime(2026, 3, 2, 7, 59, 25).timestamp())  # local time: 18:00's 2M holds until 08:00
    limiter, grants = _limiter("08:00,256K 18:00,2M", clock)
    assert limiter.rate() == 2 * M
    start = clock.monotonic()
    switch = start + 35
    bodies = [bytes([i]) * (12 * M) for i in range(WORKERS)]  # 96 MiB: 70 MiB at 2M, the rest at 256K
    assert _send_all(limiter, bodies) == bodies
    before = _per_window(grants, start, switch)
    after = _per_window(grants, switch + 1, max(t for t, _ in grants))
    assert before and after
    assert min(before) >= 0.9 * 2 * M * 30 and max(before) <= 1.1 * 2 * M * 30
    assert min(after) >= 0.9 * 256 * 1024 * 30 and max(after) <= 1.1 * 256 * 1024 * 30
    assert limiter.rate() == 256 * 1024


def test_no_limit_hands_out_everything_at_once() -> None:
    clock = FakeClock()
    limiter, _ = _limiter("off", clock)
    assert not limiter.limited
    assert _send_all(limiter, [b"x" * (3 * UPLOAD_CHUNK)]) == [b"x" * (3 * UPLOAD_CHUNK)]
    assert clock.monotonic() == 1_000_000.0  # nobody waited


def test_the_daemon_shows_the_limit_in_status_and_a_metric(spool: Any, make_settings: Callable[..., Any]) -> None:
    settings = make_settings(upload__bandwidth="00:00,50M 12:00,60M")
    with running(settings) as daemon:
        drop(spool.inbox, "call.wav", "rec-1")
        wait_for(lambda: spool.files(spool.done), what="the upload through the limiter")
        status = daemon.status_line()
        assert "bandwidth 50M/s now (00:00,50M 12:00,60M)" in status or "bandwidth 60M/s now" in status, status
        registry = daemon.parts.stats.registry
        assert registry.get_sample_value("vocwatch_bandwidth_limit_bytes_per_second") in (50 * M, 60 * M)
        size = (spool.done / "call.wav").stat().st_size
        assert (registry.get_sample_value("vocwatch_upload_body_sent_bytes_total") or 0) >= size
