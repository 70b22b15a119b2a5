"""How many journeys run at once under ``upload.workers = "auto"``: a limit that core.concurrency moves.

The pool starts ``upload.max_workers`` threads; each takes a slot before it takes a pair from the queue
and gives it back when the journey ends, so at most ``limit`` journeys run. Replies feed the controller.
"""

from __future__ import annotations

import threading

import structlog

from vocwatch.core.concurrency import Limit, Rules, observe, start

OVERLOADED = frozenset({429, 503})  # the server says it is too busy: the limit is cut


class Slots:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._cond = threading.Condition()
        self._state: Limit = start(rules)
        self._in_use = 0
        self._stopped = False
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
            return True

    def release(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify()

    def observe(self, wait_s: float, status: int | None = None) -> None:
        """One reply from the server, ``wait_s`` after the body was sent (HTTP ``status`` if it was a retry)."""
        with self._cond:
            before = self._state.limit
            saturated = self._in_use >= before
            self._state = observe(self._state, self.rules, wait_s, saturated=saturated, overloaded=status in OVERLOADED)
            after = self._state.limit
            if after > before:
                self._cond.notify(after - before)
        if after != before:
            self._log.debug("upload.concurrency", limit=after, was=before, wait_ms=round(wait_s * 1000, 1))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
