"""``upload.window``: uploads start only inside a local-time window; outside it nothing new is claimed.

Uploads in flight when it closes finish (an attempt is never cut off); a pair that needs another attempt
waits for the window to open again, as does everything still in the inbox.
"""

from __future__ import annotations

import threading

from vocwatch.core.model import Clock
from vocwatch.core.schedule import Window
from vocwatch.edges.throttle import local_day_seconds

# A closed window is looked at again at least this often (wall time), so that a clock moved by hand, a
# test's fake clock, or a DST change is noticed without waiting for the whole computed time.
RECHECK_S = 0.2


class UploadWindow:
    def __init__(self, window: Window | None, clock: Clock) -> None:
        self.window = window
        self._clock = clock

    def is_open(self) -> bool:
        return self.window is None or self.window.inside(local_day_seconds(self._clock.time()))

    def waiting(self) -> str | None:
        """For STATUS: None while open, else what it waits for."""
        if self.is_open():
            return None
        assert self.window is not None
        return f"waiting for the upload window (opens {self.window.opens})"

    def wait_open(self, stop: threading.Event) -> bool:
        """Block until the window is open; False if ``stop`` was set first."""
        while not stop.is_set():
            if self.is_open():
                return True
            stop.wait(RECHECK_S)
        return False
