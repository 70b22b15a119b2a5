"""Fakes at the seams vocwatch owns: the Clock, the Uploader Protocol, the effect listener."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from support.digests import content_digest
from vocwatch.core.model import Accepted, Outcome, Rejected, Retry
from vocwatch.edges.client import JobStatus, StatusOutcome
from vocwatch.edges.effects import Effect, point


class FakeClock:
    """Time moves only when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep_until(self, deadline: float) -> None:
        """A sleeper that makes time pass instead: thread-safe, and time never goes back."""
        with self._lock:
            self.now = max(self.now, deadline)


class Crash(BaseException):
    """The process died here. A BaseException, so that no ``except Exception`` in vocwatch survives it."""


@dataclass
class CrashAt:
    """Lets ``k`` effects happen, then dies before the next one. ``k = None``: never; counts them."""

    k: int | None = None
    count: int = 0
    seen: list[tuple[Effect, str]] = field(default_factory=list)

    def before(self, effect: Effect, target: str) -> None:
        if self.k is not None and self.count >= self.k:
            raise Crash(f"crash before effect {self.count}: {effect} {target}")
        self.count += 1
        self.seen.append((effect, target))


# Effects on the disk (not the network ones, SEND and REPLY): where a full disk can strike.
DISK_EFFECTS = frozenset({Effect.RENAME, Effect.LINK, Effect.UNLINK, Effect.WRITE, Effect.FSYNC, Effect.COMMIT})


@dataclass
class FullDiskAt:
    """Lets ``k`` effects happen, then fails the next disk effect (of kind ``effect`` and with ``within`` in
    its target, if given) once with ENOSPC: a transient full disk. The process lives on; ``struck`` says
    whether it happened."""

    k: int = 0
    effect: Effect | None = None
    within: str | None = None
    count: int = 0
    struck: bool = False

    def before(self, effect: Effect, target: str) -> None:
        matches = effect in DISK_EFFECTS and self.effect in (None, effect) and (self.within or "") in target
        if not self.struck and self.count >= self.k and matches:
            self.struck = True
            raise OSError(errno.ENOSPC, "No space left on device (injected)", target)
        self.count += 1


class Lost:
    """A scripted reply: the server took the upload and issued a job, but its reply never arrived, so the
    client sees a transient failure and sends again (with the same Idempotency-Key)."""


LOST = Lost()


@dataclass(frozen=True, slots=True)
class Received:
    filename: str
    metadata: dict[str, object]
    digest: str  # of the body, as vocwatch writes it (support.digests): what tests compare the ledger with
    size: int
    idempotency_key: str
    job_id: str | None  # None: the server refused it or answered with an error
    delivered: bool = True  # False: the job was issued but its reply was lost on the way back


Reply = Callable[[int], Outcome | None]  # attempt number -> outcome (None: accept)


class MemoryUploader:
    """The Uploader Protocol in memory: reads the whole body, as a server would, and answers by script."""

    def __init__(self, reply: Callable[[str], Outcome | Lost | None] | None = None) -> None:
        self._reply = reply or (lambda name: None)
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.jobs = 0

    def upload(
        self, audio: IO[bytes], *, filename: str, content_type: str, metadata: str, idempotency_key: str
    ) -> Outcome:
        point(Effect.SEND, filename)
        audio.seek(0)
        body = audio.read()
        scripted = self._reply(filename)
        with self._lock:
            job = None
            if scripted is None or isinstance(scripted, Lost):
                self.jobs += 1
                job = f"job-{self.jobs}"
            self.received.append(
                Received(
                    filename,
                    json.loads(metadata),
                    content_digest(body),
                    len(body),
                    idempotency_key,
                    job,
                    delivered=not isinstance(scripted, Lost),
                )
            )
        point(Effect.REPLY, filename)
        if isinstance(scripted, Lost):
            return Retry("the connection dropped before the reply")
        return Accepted(job) if job is not None else scripted  # type: ignore[return-value]


class ScriptedStatus:
    """The job-status endpoint by script: each job answers its queued replies in turn, then its last one
    for ever; a job without a script is ``started``. ``asked`` records every question."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[StatusOutcome]] = {}
        self.asked: list[str] = []

    def answer(self, job_id: str, *replies: StatusOutcome) -> None:
        self._scripts[job_id] = list(replies)

    def job_status(self, job_id: str) -> StatusOutcome:
        self.asked.append(job_id)
        script = self._scripts.get(job_id)
        if not script:
            return JobStatus(job_id, "started", None, None, {})
        return script.pop(0) if len(script) > 1 else script[0]


def status(job_id: str, state: str, error: str | None = None) -> JobStatus:
    return JobStatus(job_id, state, 1_000 if state in ("completed", "failed") else None, error, {})


NOT_FOUND = Rejected(404, "not_found", "no such job")


class NullRecorder:
    def finished(
        self, state: str, *, reason: str = "", nbytes: int = 0, seconds: float = 0.0, audio_s: float = 0.0
    ) -> None:
        pass

    def retried(self, reason: str) -> None:
        pass


class EventLog:
    """A structlog-shaped logger that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self._cond = threading.Condition()

    def bind(self, **_: object) -> EventLog:
        return self

    def _log(self, event: str, **fields: object) -> None:
        with self._cond:
            self.events.append((event, fields))
            self._cond.notify_all()

    debug = info = warning = error = exception = _log

    def wait_for(self, event: str, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(e == event for e, _ in self.events), timeout=timeout)


@dataclass
class FailAt:
    """Raises ``error`` (an OSError: a full disk, say) before the first effect whose target matches."""

    effect: Effect
    suffix: str
    error: OSError
    fired: bool = False
    then: Callable[[], None] | None = None  # instead of raising: do this (a producer's write, say)

    def before(self, effect: Effect, target: str) -> None:
        if self.fired or effect != self.effect or not target.endswith(self.suffix):
            return
        self.fired = True
        if self.then is not None:
            self.then()
            return
        raise self.error


class ShiftedClock:
    """Real time plus an offset a test moves: a daemon's settle waits still pass, yet a test can jump to
    19:59 or a month later (windows, timetables, retention) without waiting for it."""

    def __init__(self, at: float | None = None) -> None:
        import time as _time

        self._time = _time
        self.offset = 0.0 if at is None else at - _time.time()

    def time(self) -> float:
        return self._time.time() + self.offset

    def monotonic(self) -> float:
        return self._time.monotonic() + self.offset

    def jump_to(self, at: float) -> None:
        self.offset += at - self.time()


class QueuePool:
    """The planner's view of the pool (has_room, offer, owns), as a list a test takes from."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.offered: list[object] = []

    def has_room(self) -> bool:
        return len(self.offered) < self.capacity

    def offer(self, claimed: object) -> bool:
        if not self.has_room():
            return False
        self.offered.append(claimed)
        return True

    def owns(self, claimed: object) -> bool:
        return claimed in self.offered

    def take(self) -> object:
        return self.offered.pop(0)
