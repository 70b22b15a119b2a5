"""Live counters for STATUS and metrics; the pipeline records into them through the Recorder protocol."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.retries = 0
        self.bytes_sent = 0
        self.last_success: float | None = None

    def finished(self, state: str, *, nbytes: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.outcomes[state] += 1
            self.bytes_sent += nbytes
            if state == "done":
                self.last_success = time.time()

    def retried(self, reason: str) -> None:
        with self._lock:
            self.retries += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.outcomes, "retries": self.retries}
