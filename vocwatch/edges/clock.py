"""The real clock; tests pass their own (tests/support) through the Clock Protocol in core.model."""

from __future__ import annotations

import time


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
