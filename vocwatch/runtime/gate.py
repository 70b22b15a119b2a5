"""The breaker every worker passes before sending: one shared view of whether Crescendo is usable.

Closed: send. Open: wait until the backoff (or Retry-After, or the auth pause) runs out, then
exactly one worker probes (half-open) while the others keep waiting; its result decides for all.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vocwatch.core.model import AuthProblem, Clock, Outcome, Retry, Unsettled

MAX_EXPONENT = 1000  # 2.0 ** 1000 is still a float


def full_jitter(failures: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """AWS's 'full jitter': uniform in [0, min(cap, initial * 2**(failures-1))].

    The exponent is capped before exponentiating (2.0 ** 1024 raises OverflowError): past the
    exponent at which the cap is reached, more failures change nothing.
    """
    reach = math.ceil(math.log2(cap / initial)) if cap > initial > 0 else 0
    exponent = min(max(0, failures - 1), max(0, min(reach, MAX_EXPONENT)))
    return rand() * min(cap, initial * 2.0**exponent)


@dataclass(frozen=True, slots=True)
class GateState:
    open: bool
    auth_paused: bool
    failures: int
    reopens_in: float


class Gate:
    def __init__(
        self,
        clock: Clock,
        *,
        initial_backoff: float,
        max_backoff: float,
        auth_probe: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._initial = initial_backoff
        self._cap = max_backoff
        self._auth_probe = auth_probe
        self._rand = rand
        self._cond = threading.Condition()
        self._open_until: float | None = None  # None: closed
        self._prober: int | None = None
        self._failures = 0
        self._auth_paused = False
        self._stopped = False

    def acquire(self) -> bool:
        """Block until this thread may send; False once the gate is stopped (shutdown)."""
        me = threading.get_ident()
        with self._cond:
            while not self._stopped:
                if self._open_until is None:
                    return True
                wait = self._open_until - self._clock.monotonic()
                if wait <= 0 and self._prober is None:
                    self._prober = me
                    return True
                self._cond.wait(timeout=wait if wait > 0 else None)
            return False

    def report(self, outcome: Outcome) -> bool:
        """Fold one attempt's outcome in; True when it (re)opened the gate for an auth problem."""
        me = threading.get_ident()
        with self._cond:
            was_prober = self._prober == me
            if was_prober:
                self._prober = None
            now = self._clock.monotonic()
            if isinstance(outcome, Unsettled):
                pass  # the file's fault, not the server's
            elif isinstance(outcome, AuthProblem):
                newly = not self._auth_paused or was_prober
                self._auth_paused = True
                self._open_until = max(self._open_until or now, now + self._auth_probe)
                self._cond.notify_all()
                return newly
            elif isinstance(outcome, Retry):
                self._failures += 1
                # Retry-After is a floor, not a licence: "0" or a past date must not mean back-to-back probes.
                delay = full_jitter(self._failures, self._initial, self._cap, self._rand)
                if outcome.after is not None:
                    delay = max(delay, outcome.after)
                self._open_until = max(self._open_until or now, now + min(delay, self._cap))
            else:  # Accepted or Rejected: the server is answering for real
                self._failures = 0
                self._auth_paused = False
                self._open_until = None
            self._cond.notify_all()
            return False

    def release(self) -> None:
        """Give up a probe slot without a result (the attempt was not made)."""
        with self._cond:
            if self._prober == threading.get_ident():
                self._prober = None
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def state(self) -> GateState:
        with self._cond:
            reopens = 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock.monotonic())
            return GateState(self._open_until is not None, self._auth_paused, self._failures, reopens)
