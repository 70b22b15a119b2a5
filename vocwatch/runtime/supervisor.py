"""Structured concurrency for the runtime: services start in order and stop in reverse, against one deadline.

A service owns its threads. Stopping is cancel (never blocks), then join (until the shared deadline). The
supervisor reports what outlived the deadline; its owner then must not close what those threads still use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from vocwatch.core.model import Clock


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def cancel(self) -> object:
        """Ask the service to stop; returns at once."""

    def join(self, deadline: float) -> bool:
        """Wait until its threads ended or ``deadline`` (clock.monotonic) passed; True if they ended."""


class LoopService:
    """One thread running ``run`` until ``stop`` is called (the planner, the status poller)."""

    def __init__(self, name: str, run: Callable[[], None], stop: Callable[[], None], clock: Clock) -> None:
        self.name = name
        self._stop = stop
        self._clock = clock
        # Joined by the supervisor; a daemon thread only so an abandoned one cannot hold the process open.
        self._thread = threading.Thread(target=run, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stop()

    def join(self, deadline: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout=max(0.0, deadline - self._clock.monotonic()))
        return not self._thread.is_alive()


class CallbackService:
    """A service whose start and stop are plain calls (the watcher, the metrics server); stop blocks briefly."""

    def __init__(self, name: str, start: Callable[[], object], stop: Callable[[], None]) -> None:
        self.name = name
        self._start = start
        self._stop = stop
        self.started = False

    def start(self) -> None:
        self._start()
        self.started = True

    def cancel(self) -> None:
        return None

    def join(self, deadline: float) -> bool:
        if self.started:
            self.started = False
            self._stop()
        return True


class Supervisor:
    """Starts services in the given order; stop() cancels and joins them one by one in reverse order."""

    def __init__(self, services: Sequence[Service], clock: Clock) -> None:
        self.services = list(services)
        self._clock = clock
        self._started: list[Service] = []
        self._log = structlog.get_logger("vocwatch.runtime.supervisor")

    def start(self) -> None:
        """Start each service in order; if one fails to start, those already started are stopped again."""
        for service in self.services:
            try:
                service.start()
            except BaseException:
                self.stop(self._clock.monotonic() + 5.0)
                raise
            self._started.append(service)

    def stop(self, deadline: float) -> list[str]:
        """Cancel then join each started service, last started first; the names of those still running."""
        alive: list[str] = []
        while self._started:
            service = self._started.pop()
            service.cancel()
            if not service.join(deadline):
                alive.append(service.name)
                self._log.debug("service.outlived_deadline", service=service.name)
        return alive
