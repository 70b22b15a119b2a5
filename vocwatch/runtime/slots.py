"""How many journeys run at once under ``upload.workers = "auto"``: a limit that core.concurrency moves.

The pool starts ``upload.max_workers`` threads; each takes a slot before it takes a pair from the queue
and gives it back when the journey ends, so at most ``limit`` journeys run. Replies feed the controller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from vocwatch.core.concurrency import Limit, Rules, observe_round, start

OVERLOADED = frozenset({429, 503})  # the server says it is too busy: the limit is cut


class Slots:
    def __init__(self, rules: Rules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self._cond = threading.Condition()
        self._state: Limit = start(rules)
        self._in_use = 0
        self._stopped = False
        self._taken = threading.local()  # when this thread took its slot: a first round's round trips
        self._log = structlog.get_logger("vocwatch.runtime.slots")

    @property
    def limit(self) -> int:
        return self._state.limit

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    def acquire(self) -> bool:
        """Wait for a slot under the limit; False once stopped (the worker ends)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._in_use < self._state.limit)
            if self._stopped:
                return False
            self._in_use += 1
            self._taken.at = self._clock()
            return True

    def release(self) -> None:
        """Give a slot back. The worker that gives it takes one again at once (the pool's loop), so a
        parked thread is woken only when a slot would stay free even then: a wakeup that finds no slot
        costs a GIL handoff, taken from the journeys running. ``in_use == 0``: no slot is ever stranded."""
        with self._cond:
            self._in_use -= 1
            if self._in_use < self._state.limit - 1 or self._in_use == 0:
                self._cond.notify()

    def observe(self, wait_s: float, status: int | None = None) -> None:
        """One reply from the server, ``wait_s`` after the body was sent (HTTP ``status`` if it was a retry)."""
        taken: float | None = getattr(self._taken, "at", None)
        with self._cond:
            before, now = self._state.limit, self._clock()
            self._state, measured = observe_round(
                self._state,
                self.rules,
                wait_s,
                now=now,
                saturated=self._in_use >= before,
                overloaded=status in OVERLOADED,
                held_s=None if taken is None else now - taken,
            )
            after = self._state.limit
            if after > before:
                self._cond.notify(after - before)
        if measured is not None:
            self._log.debug(
                "upload.concurrency",
                limit=after,
                was=before,
                wait_ms=round(measured.mean_wait_s * 1000, 1),
                round_trip_ms=None if measured.round_trip_s is None else round(measured.round_trip_s * 1000, 1),
                useful=None if measured.useful is None else round(measured.useful, 1),
            )

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
