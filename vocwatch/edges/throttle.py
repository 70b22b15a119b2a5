"""The one bandwidth limiter every upload body reads through (``upload.bandwidth``).

A shared reservation limiter (core.schedule.reserve, the virtual-scheduling form of a token bucket): each
read reserves its bytes under one lock, then waits until they are paid for, so all workers together stay at
the rate, first come first served. The rate is looked up in the timetable at every grant, and a grant covers
at most a tenth of a second at the current rate, so a timetable switch bites within that, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vocwatch.core import schedule
from vocwatch.core.model import Clock
from vocwatch.core.schedule import Reservation, Timetable

# Idle time earns at most this much credit: over 30 s the limit holds within 1/30 (3.3 %) plus one grant.
BURST_S = 1.0
# A wait is cut into slices this long, so a limiter asked to stop (shutdown) does not hold a worker.
WAIT_SLICE_S = 0.5


def local_day_seconds(epoch: float) -> float:
    """Seconds since local midnight at ``epoch`` (the timetable's and the window's time of day)."""
    t = time.localtime(epoch)
    return t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec + (epoch % 1.0)


class Bandwidth:
    """Thread-safe; ``sleep_until(deadline)`` waits until ``clock.monotonic()`` reaches ``deadline``."""

    def __init__(
        self,
        timetable: Timetable,
        clock: Clock,
        *,
        sleep_until: Callable[[float], None] | None = None,
        on_grant: Callable[[float, int], None] | None = None,
        burst_s: float = BURST_S,
    ) -> None:
        self._table = timetable
        self._clock = clock
        self._lock = threading.Lock()
        self._state = Reservation()
        self._last_rate: int | None = None
        self._burst = burst_s
        self._stop = threading.Event()
        self._sleep_until = sleep_until or self._real_sleep
        self._on_grant = on_grant
        self.granted = 0  # bytes handed out so far

    @property
    def limited(self) -> bool:
        return self._table.limited

    def rate(self) -> int | None:
        """The limit now, bytes/s (None: no limit)."""
        return self._table.rate_at(local_day_seconds(self._clock.time()))

    def describe(self) -> str:
        """For STATUS: the limit now, and the timetable if there is one."""
        if not self._table.limited:
            return "no limit"
        now = schedule.show_rate(self.rate())
        return now + "/s" if len(self._table.entries) == 1 else f"{now}/s now ({self._table.show()})"

    def stop(self) -> None:
        self._stop.set()

    def acquire(self, wanted: int) -> int:
        """Block until some of ``wanted`` bytes may be sent; returns how many (at least 1, at most ``wanted``)."""
        if wanted <= 0:
            return wanted
        rate = self.rate()
        if rate is None or self._stop.is_set():
            self._granted(self._clock.monotonic(), wanted)
            return wanted
        size = schedule.grant_size(rate, wanted)
        with self._lock:
            if rate != self._last_rate:
                # A switch: what was reserved at the old rate is paid for at the new one from now on.
                self._state = Reservation(min(self._state.free_at, self._clock.monotonic()))
                self._last_rate = rate
            self._state, ready_at = schedule.reserve(self._state, self._clock.monotonic(), size, rate, self._burst)
        if ready_at > self._clock.monotonic():
            self._sleep_until(ready_at)
        self._granted(ready_at, size)
        return size

    def _granted(self, at: float, size: int) -> None:
        with self._lock:
            self.granted += size
        if self._on_grant is not None:
            self._on_grant(at, size)

    def _real_sleep(self, deadline: float) -> None:
        while not self._stop.is_set():
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, WAIT_SLICE_S))
