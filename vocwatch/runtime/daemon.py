"""The composition root: the only place that builds real objects from Settings."""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog

from vocwatch.core import concurrency
from vocwatch.core.health import Limits, Observations, healthy, upload_limit
from vocwatch.core.journey import DoneAction, OnConflict
from vocwatch.core.model import Clock
from vocwatch.core.pairing import Rules
from vocwatch.core.states import Stage
from vocwatch.edges.client import CrescendoClient, build_http
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import ConfigError, Settings, api_key_sources, resolve_api_key
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledgers import HolderAlive, LedgerStore, open_ledger
from vocwatch.edges.logs import SCRUB
from vocwatch.edges.notify import Notifier, NullNotifier, watchdog_interval
from vocwatch.edges.stats import Stats
from vocwatch.edges.stats import serve as serve_metrics
from vocwatch.edges.throttle import Bandwidth
from vocwatch.edges.watcher import Watcher
from vocwatch.runtime.gate import Gate
from vocwatch.runtime.gauges import expose_health
from vocwatch.runtime.housekeeping import Housekeeping
from vocwatch.runtime.lease import LeaseKeeper
from vocwatch.runtime.pipeline import Pipeline, PipelineOptions
from vocwatch.runtime.planner import Planner, ScanOptions
from vocwatch.runtime.poller import StatusPoller
from vocwatch.runtime.pool import Pool
from vocwatch.runtime.recovery import other_instances as p_others
from vocwatch.runtime.recovery import recover
from vocwatch.runtime.slots import Slots
from vocwatch.runtime.supervisor import CallbackService, LoopService, Service, Supervisor
from vocwatch.runtime.window import UploadWindow

if TYPE_CHECKING:
    from vocwatch.edges.ledger_pg import PgLedger

EX_TEMPFAIL = os.EX_TEMPFAIL  # try again later: the instance is busy
# A planner or poller loop ticks at least every second; one silent for this long is stalled.
LOOP_STALL_S = 30.0
# On top of upload.shutdown_grace_seconds: for the loops to end and the watcher and metrics to stop.
SHUTDOWN_MARGIN_S = 2.0


@dataclass
class Parts:
    settings: Settings
    clock: Clock
    folders: Folders
    ledger: LedgerStore
    client: CrescendoClient
    gate: Gate
    pipeline: Pipeline
    pool: Pool
    stats: Stats
    bandwidth: Bandwidth
    # Is another process that holds ledger rows alive? Its work folder's flock (one host, SQLite), or
    # its lease in the fleet ledger (PostgreSQL: any host).
    holder_alive: HolderAlive
    lease: LeaseKeeper | None = None  # the fleet ledger's lease service

    def close(self) -> None:
        self.bandwidth.stop()
        self.client.close()
        self.ledger.close()
        self.folders.unlock()


def check_layout(settings: Settings) -> None:
    """Refuse folder layouts that would loop or make moves non-atomic (ConfigError, exit 78)."""
    f = settings.folders
    named = {
        "folders.inbox": f.inbox,
        "folders.done": f.done,
        "folders.failed": f.failed,
        "folders.work": f.work_root,
        "folders.uploaded": f.uploaded_root,
    }
    problems = []
    inbox = f.inbox.resolve()
    for key, path in named.items():
        if key != "folders.inbox" and (path.resolve() == inbox or inbox in path.resolve().parents):
            problems.append(f"{key}: {path} is inside the inbox {f.inbox}; put it beside the inbox instead")
    devices: dict[int, list[str]] = {}
    for key, path in named.items():
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        devices.setdefault(probe.stat().st_dev, []).append(key)
    if len(devices) > 1:
        groups = "; ".join(", ".join(keys) for keys in devices.values())
        problems.append(
            f"folders: inbox, work, done, failed and uploaded must share one filesystem so that moves "
            f"are atomic renames, but they span {len(devices)} ({groups}); put them under one parent folder"
        )
    if f.done_after == "completed" and not settings.status.poll:
        problems.append(
            'folders.done_after = "completed" waits for each job to complete, which only the status poller '
            'learns: set status.poll = true, or folders.done_after = "accepted"'
        )
    if problems:
        raise ConfigError(problems)


def build(
    settings: Settings, clock: Clock | None = None, *, stats: Stats | None = None, instance: str | None = None
) -> Parts:
    """Every real part from Settings; ``instance`` overrides the work sub-folder (the backfill has its own)."""
    clock = clock or SystemClock()
    stats = stats or Stats()
    f = settings.folders
    work = f.work_root / (instance or settings.instance)
    folders = Folders(
        inbox=f.inbox,
        work=work,
        done=f.done,
        failed=f.failed,
        uploaded=f.uploaded_root,
    )
    ledger = open_ledger(settings.ledger, clock, holder=work.name, wait=True)
    lease: LeaseKeeper | None = None
    holder_alive: HolderAlive = folders.holder_alive
    fleet = fleet_ledger(ledger)
    if fleet is not None:
        lease = LeaseKeeper(fleet, folders, clock, takeover=instance is None)
        holder_alive = fleet.lease_alive

    def key() -> Any:
        secret = resolve_api_key(settings)
        if secret is not None:
            SCRUB.add(secret.get_secret_value())
        return secret

    api = settings.api
    verify: bool | str = str(api.ca_bundle) if api.ca_bundle else api.verify_tls
    http = build_http(
        workers=settings.upload.threads,
        connect_timeout=api.connect_timeout_seconds,
        read_timeout=api.read_timeout_seconds,
        verify=verify,
        trust_env=api.trust_env,
        proxy=api.proxy,
        # A CA bundle that is named is still loaded (a missing one stops the start, as it always did).
        tls=api.base_url.scheme == "https" or api.ca_bundle is not None,
    )
    up = settings.upload
    # One limiter for every worker of this process: upload.bandwidth holds for all of them together.
    bandwidth = Bandwidth(up.timetable, clock, on_grant=stats.body_bytes)
    client = CrescendoClient(
        http=http,
        base_url=str(api.base_url),
        tenant_id=api.tenant_id,
        key=key,
        limiter=bandwidth,
    )
    gate = Gate(
        clock,
        initial_backoff=up.initial_backoff_seconds,
        max_backoff=up.max_backoff_seconds,
        auth_probe=up.auth_probe_seconds,
    )
    options = PipelineOptions(
        max_bytes=up.max_bytes,
        defaults=settings.metadata.defaults,
        on_conflict=OnConflict(up.on_conflict),
        done_stage=Stage.UPLOADED if f.done_after == "completed" else Stage.DONE,
        require_sidecar=settings.watch.require_sidecar,
        truncated=settings.watch.truncated,
        poll_initial_s=settings.status.poll_initial_seconds if settings.status.poll else None,
        done_action=DoneAction(f.done_action),
        done_layout=f.done_layout,
    )
    pipeline = Pipeline(
        folders=folders,
        client=client,
        ledger=ledger,
        clock=clock,
        options=options,
        recorder=stats,
        holder_alive=holder_alive,
    )
    slots = Slots(concurrency.Rules(initial=min(4, up.max_workers), maximum=up.max_workers)) if up.adaptive else None
    pool = Pool(
        pipeline,
        gate,
        workers=up.threads,
        capacity=up.queue_capacity,
        clock=clock,
        give_up_after_s=up.give_up_after_seconds,
        slots=slots,
    )
    stats.live(
        "vocwatch_upload_concurrency_limit",
        'uploads allowed at once: upload.workers, or the adaptive limit under "auto"',
        lambda: slots.limit if slots is not None else up.threads,
    )
    stats.live(
        "vocwatch_bandwidth_limit_bytes_per_second",
        "upload.bandwidth in force now (0: no limit)",
        lambda: bandwidth.rate() or 0,
    )
    return Parts(settings, clock, folders, ledger, client, gate, pipeline, pool, stats, bandwidth, holder_alive, lease)


def require_key(settings: Settings) -> None:
    if resolve_api_key(settings) is None:
        raise ConfigError(
            [
                f"api key: none found; looked in {api_key_sources(settings)}. "
                "Put the key in one of them (never in the config file itself)."
            ]
        )


class Daemon:
    """``vocwatch run``: recover, scan, watch, upload, until asked to stop."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        check_layout(settings)
        require_key(settings)
        self.settings = settings
        self.parts = build(settings, clock)
        self.notifier = notifier or NullNotifier()
        self.stop_requested = threading.Event()
        # What wakes the main loop: a signal, or request_stop(). A SimpleQueue's put() is reentrant (C), so a
        # signal handler may call it whatever the main thread was doing when the signal came.
        self._wake: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._waiting_for_lease = False
        self.log = structlog.get_logger("vocwatch.runtime.daemon")
        p = self.parts
        self.window = UploadWindow(settings.upload.upload_window, p.clock)
        p.pool.window = self.window
        p.stats.live("vocwatch_upload_window_open", "1 while upload.window lets uploads start", self.window.is_open)
        watch = settings.watch
        # The pool wakes the planner when a slot frees, so a backlog drains without polling.
        self.planner = Planner(
            folders=p.folders,
            ledger=p.ledger,
            pool=p.pool,
            clock=p.clock,
            options=ScanOptions(
                rules=Rules(watch.settle_seconds, watch.pair_timeout_seconds, watch.require_sidecar),
                ignore=watch.ignore,
                recursive=watch.recursive,
                rescan_s=watch.rescan_seconds,
                order=settings.upload.order,
                incomplete_timeout_s=watch.incomplete_timeout_seconds,
            ),
            on_failed=p.stats.failed,
        )
        p.pool.on_idle = self.planner.hint
        if p.lease is not None:
            p.lease.on_adopted = lambda: self.planner.hint("", "rescan")
        p.stats.live(
            "vocwatch_oldest_pending_age_seconds",
            "Age (by mtime) of the oldest complete pair not yet delivered; 0 when none waits",
            self.oldest_pending_age,
        )
        st = settings.status
        self.poller = StatusPoller(
            ledger=p.ledger,
            client=p.client,
            clock=p.clock,
            folders=p.folders,
            initial_s=st.poll_initial_seconds,
            max_s=st.poll_max_seconds,
            factor=st.poll_factor,
            unknown_after_s=st.unknown_job_seconds,
            in_flight=lambda row: p.pool.holds(str(p.folders.work / row.file)),
            on_status=p.stats.job_status,
            on_failed=p.stats.failed,
            done_action=DoneAction(settings.folders.done_action),
            done_layout=settings.folders.done_layout,
            holder_alive=p.holder_alive,
        )
        p.stats.live("vocwatch_queue_depth", "Claimed pairs waiting for a worker", lambda: p.pool.queued)
        p.stats.live("vocwatch_in_flight", "Uploads being worked on", lambda: p.pool.busy)
        p.stats.live("vocwatch_pending_files", "Files seen in the inbox, not yet claimed", lambda: self.planner.pending)
        p.stats.live("vocwatch_auth_paused", "1 while the API refuses the key", lambda: p.gate.state().auth_paused)
        pg = fleet_ledger(p.ledger)
        p.stats.identify(settings.instance, "sqlite" if pg is None else "postgresql")
        if pg is not None and p.lease is not None:
            lease = p.lease
            p.stats.live(
                "vocwatch_ledger_reachable", "0 while the fleet ledger cannot be reached", lambda: pg.problem is None
            )
            p.stats.live("vocwatch_lease_held", "0 while this daemon's lease was taken over", lambda: not lease.lost)
        self.watcher = Watcher(
            settings.folders.inbox,
            self.planner.hint,
            mode=watch.mode,
            recursive=watch.recursive,
            poll_interval_s=watch.poll_interval_seconds,
        )
        expose_health(p.stats, gate=p.gate, watcher=self.watcher, workers=settings.upload.threads)
        api = settings.api
        self.limits = Limits(
            loop_s=LOOP_STALL_S,
            upload_s=upload_limit(api.connect_timeout_seconds, api.read_timeout_seconds, api.read_timeout_seconds),
        )
        self.unhealthy: str | None = None  # why the last heartbeat sent no WATCHDOG=1
        f = settings.folders
        self.housekeeping = Housekeeping(
            folders=p.folders,
            ledger=p.ledger,
            clock=p.clock,
            retention_days=f.done_retention_days,
            keep_days=settings.ledger.keep_days,
            keep_out=[f.failed, f.inbox, f.work_root, f.uploaded_root],
        )
        self._housekeeping_loop = LoopService("housekeeping", self.housekeeping.run, self.housekeeping.stop, p.clock)
        self._planner_loop = LoopService("planner", self.planner.run, self.planner.stop, p.clock)
        self._poller_loop = LoopService("status-poller", self.poller.run, self.poller.stop, p.clock)
        self.supervisor = Supervisor(self._services(), p.clock)

    def _services(self) -> list[Service]:
        """In start order; they stop in reverse: intake first, then the uploads' drain, the poller, metrics."""
        services: list[Service] = []
        if self.parts.lease is not None:  # first up, last down: claims end before the renewals do
            services.append(self.parts.lease)
        listen = self.settings.metrics.listen
        if listen:
            stop_metrics: list[Callable[[], None]] = []

            def start_metrics() -> None:
                stop_metrics.append(serve_metrics(self.parts.stats, listen))
                self.log.info("metrics.listening", listen=listen)

            services.append(CallbackService("metrics", start_metrics, lambda: stop_metrics.pop()()))
        if self.settings.status.poll:
            services.append(self._poller_loop)
        if self.housekeeping.needed:
            services.append(self._housekeeping_loop)
        services.append(self.parts.pool)
        # The watcher before the planner's first scan: nothing dropped in between goes unannounced.
        services.append(CallbackService("watcher", self.watcher.start, self.watcher.stop))
        services.append(self._planner_loop)
        return services

    def oldest_pending_age(self) -> float:
        """Seconds since the mtime of the oldest complete pair that is ready, queued or being uploaded."""
        times = [t for t in (self.planner.oldest_ready_mtime(), self.parts.pool.oldest_mtime()) if t is not None]
        return max(0.0, self.parts.clock.time() - min(times)) if times else 0.0

    def request_stop(self, *_: Any) -> None:
        self.stop_requested.set()
        self._wake.put(None)
        if self.parts.lease is not None and not self.parts.lease.alive:
            self.parts.lease.cancel()  # still waiting for its first lease: stop waiting

    def on_signal(self, signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT. A handler runs between two bytecodes of the main thread, which may hold the very lock
        Event.set() takes (inside stop_requested.wait()): setting it here could hang the stop for good, so the
        handler only puts on the reentrant queue, and the main loop stops in its own time."""
        self._wake.put(signum)
        if self._waiting_for_lease:
            # The main thread waits in the lease, not on the queue; it starts no thread meanwhile, so
            # Thread.start() here takes no lock it holds.
            threading.Thread(target=self.request_stop, name="vocwatch-signal").start()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def _asked_to_stop(self, tick: float) -> bool:
        """Wait up to ``tick`` seconds for a signal or request_stop(); whether one came."""
        try:
            self._wake.get(timeout=tick)
        except queue.Empty:
            return self.stop_requested.is_set()
        return True

    def run(self) -> int:
        """Recover, start every service, send heartbeats until asked to stop, then shut down (exit status)."""
        p = self.parts
        p.folders.ensure()
        if not p.folders.lock():
            self.log.error(
                "daemon.instance_busy",
                work=str(p.folders.work),
                fix="another vocwatch runs with this ledger and instance; stop it, or give this one "
                "its own ledger.path or folders.instance",
            )
            p.close()
            return EX_TEMPFAIL
        self._waiting_for_lease = True
        try:
            leased = p.lease is None or p.lease.acquire()
        finally:
            self._waiting_for_lease = False
        if not leased or not self._wake.empty():
            self.request_stop()
            p.close()  # asked to stop before the start (or while waiting for a lease): nothing was claimed
            return 0
        self.recover_ledger()
        self.supervisor.start()
        self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
        self.log.info(
            "daemon.ready",
            inbox=str(self.settings.folders.inbox),
            workers=self.settings.upload.workers,
            instance=self.settings.instance,
            watching=self.watcher.healthy(),
            version=_version(),
        )
        tick = min(1.0, watchdog_interval() or 1.0)
        while not self._asked_to_stop(tick):
            self.notifier.notify(self.heartbeat())
        self.request_stop()
        return self.shutdown()

    def health(self) -> str | None:
        """None while every service makes progress (core/health.py); else why not."""
        p = self.parts
        workers, queued, moved = p.pool.observe()
        poll = self.settings.status.poll
        observed = Observations(
            planner_alive=self._planner_loop.alive,
            planner_tick=self.planner.last_progress,
            poller_alive=self._poller_loop.alive if poll else None,
            poller_tick=self.poller.last_progress,
            workers=workers,
            queued=queued,
            queue_moved=moved,
        )
        return healthy(observed, p.clock.monotonic(), self.limits)

    def heartbeat(self) -> str:
        """One sd_notify message: WATCHDOG=1 only if every service makes progress, and STATUS."""
        watching = self.watcher.heal()
        # The watchdog is for a stuck daemon, which a restart fixes. A lost inbox (a share that
        # dropped) is not: a restart cannot bring it back, so it shows in STATUS and the logs instead,
        # while the planner keeps rescanning and the watcher keeps trying.
        stall = self.health()
        down = self._ledger_problem()
        if stall is not None and down is not None:
            # Workers and the poller wait for the database; a restart cannot bring it back (as for a lost inbox).
            stall = None
        if stall != self.unhealthy:
            if stall is None:
                self.log.info("daemon.healthy", was=self.unhealthy)
            else:
                self.log.error("daemon.stalled", problem=stall, fix="systemd's watchdog restarts vocwatch if it lasts")
            self.unhealthy = stall
        status = self.status_line()
        if stall is not None:
            status = f"unhealthy: {stall}; {status}"
        elif not watching:
            status = "unhealthy: " + status
        return ("WATCHDOG=1\n" if stall is None else "") + "STATUS=" + status

    def shutdown(self) -> int:
        """Stop the services in reverse order against one deadline; close resources only if no thread outlived it."""
        grace = self.settings.upload.shutdown_grace_seconds
        self.notifier.notify(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={int((grace + 10) * 1e6)}")
        self.log.info("daemon.stopping", in_flight=self.parts.pool.busy, grace_s=grace)
        fleet = fleet_ledger(self.parts.ledger)
        if fleet is not None and fleet.problem is not None:
            fleet.interrupt()  # the database is down: waiting for it would outlast any grace
        alive = self.supervisor.stop(self.parts.clock.monotonic() + grace + SHUTDOWN_MARGIN_S)
        if alive:
            # Closing the ledger or the HTTP client under a live thread would fail its upload midway.
            self.log.warning(
                "daemon.abandoned",
                services=alive,
                uploads=self.parts.pool.in_flight(),
                note="still running after the shutdown grace; ledger and HTTP client left open until exit. "
                "Their pairs stay in work/ and are sent again at the next start with the same Idempotency-Key",
            )
        else:
            self.parts.close()
        self.log.info("daemon.stopped", **self.parts.stats.snapshot())
        return 0

    def recover_ledger(self) -> None:
        """Rows that a crash left behind their files: the same decision (core.journey.decide_row) the
        poller uses. Pairs still in work/ are not touched here: the planner offers them, and each one's
        own decision (finish the move, drop a copy, upload, put back) runs in a worker."""
        recover(self.parts, self.log)
        others = [d.name for d in p_others(self.parts)]
        if others:
            self.log.warning(
                "recover.other_instances",
                instances=others,
                note="work folders of other vocwatch instances; each recovers only its own claims",
            )

    def status_line(self) -> str:
        p = self.parts
        counts = p.stats.snapshot()
        gate = p.gate.state()
        state = "auth paused" if gate.auth_paused else ("backing off" if gate.open else "ok")
        down = self._ledger_problem()
        if down is not None:
            state = f"ledger unreachable ({down}), claims paused" + ("" if state == "ok" else f", {state}")
        elif p.lease is not None and p.lease.lost:
            state = "lease taken over, waiting for a new one" + ("" if state == "ok" else f", {state}")
        waiting = self.window.waiting()
        if waiting is not None:
            state = waiting if state == "ok" else f"{waiting}, {state}"
        if self.watcher.problem:  # say why nothing new is taken, not "ok"
            state = f"watcher down: {self.watcher.problem}" + ("" if state == "ok" else f", {state}")
        limit = f", bandwidth {p.bandwidth.describe()}" if p.bandwidth.limited else ""
        slots = p.pool.slots
        if slots is not None:
            limit += f", concurrency {slots.limit} of {slots.rules.maximum} (auto)"
        return (
            f"{state}; pending {self.planner.pending}, queued {p.pool.queued}, in flight {p.pool.busy}, "
            f"done {counts.get('done', 0)}, failed {counts.get('failed', 0)}, retries {counts.get('retries', 0)}"
            f"{limit}"
        )

    def _ledger_problem(self) -> str | None:
        fleet = fleet_ledger(self.parts.ledger)
        return fleet.problem if fleet is not None else None


def _version() -> str:
    from vocwatch import __version__

    return __version__


def fleet_ledger(ledger: object) -> PgLedger | None:
    """The fleet (PostgreSQL) ledger, if that is this daemon's. Asked without importing psycopg: unless
    ``ledger.url`` opened one, its module was never loaded and ``ledger`` cannot be one."""
    module = sys.modules.get("vocwatch.edges.ledger_pg")
    if module is None or not isinstance(ledger, module.PgLedger):
        return None
    return cast("PgLedger", ledger)
