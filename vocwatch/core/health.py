"""The watchdog's rule: is every runtime service making progress? Pure: observations in, verdict out.

systemd restarts a daemon that stops pinging, so only a stall a restart can fix counts: a loop that no
longer ticks, a worker that died, an upload whose bytes stopped moving for longer than the HTTP timeouts
allow, or a queue that idle workers do not take from. Waiting on the gate (backoff, a refused key) is not
a stall: a restart would wait just the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WorkerState(StrEnum):
    IDLE = "idle"  # waits for the queue
    WORKING = "working"  # prepare, finish
    SENDING = "sending"  # the request is being made
    WAITING = "waiting"  # on the gate (backoff, auth pause)
    PARKED = "parked"  # upload.workers = "auto": beyond the concurrency limit, waits for a slot


@dataclass(frozen=True, slots=True)
class Worker:
    """One upload worker: alive, what it does, and the last moment it showed progress at that."""

    alive: bool
    state: WorkerState  # idle: waits for the queue; waiting: on the gate; working: prepare/finish
    since: float  # monotonic: when it entered ``state``, or (sending) when bytes last moved
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Observations:
    """What the services report, sampled at one instant."""

    planner_alive: bool
    planner_tick: float
    poller_alive: bool | None  # None: the status poller is off
    poller_tick: float
    workers: tuple[Worker, ...]
    queued: int
    queue_moved: float  # monotonic: when the queue last moved (a worker took a pair, or it became non-empty)


@dataclass(frozen=True, slots=True)
class Limits:
    loop_s: float  # a loop that has not ticked for this long is stalled
    upload_s: float  # no progress by an upload (or on the queue) for this long is a stall


def upload_limit(connect_s: float, read_s: float, write_s: float) -> float:
    """How long one upload may show no progress: every HTTP timeout once, with half again as margin."""
    return 1.5 * (connect_s + read_s + write_s) + 1.0


def healthy(obs: Observations, now: float, limits: Limits) -> str | None:
    """None when every service makes progress; otherwise the first stall found, as a short reason."""
    if not obs.planner_alive:
        return "planner thread ended"
    if now - obs.planner_tick > limits.loop_s:
        return f"planner has not ticked for {now - obs.planner_tick:.0f} s"
    if obs.poller_alive is not None:
        if not obs.poller_alive:
            return "status poller thread ended"
        if now - obs.poller_tick > limits.loop_s:
            return f"status poller has not ticked for {now - obs.poller_tick:.0f} s"
    if any(not w.alive for w in obs.workers):
        return "an upload worker ended"
    for w in obs.workers:
        if w.state in ("working", "sending") and now - w.since > limits.upload_s:
            return f"upload of {w.file} shows no progress for {now - w.since:.0f} s"
    idle = any(w.state == WorkerState.IDLE for w in obs.workers)
    if obs.queued and idle and now - obs.queue_moved > limits.upload_s:
        return f"{obs.queued} queued but no idle worker took one for {now - obs.queue_moved:.0f} s"
    return None
