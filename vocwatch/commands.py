"""What each command does, given its parsed arguments; returns the exit status."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import structlog
from tqdm import tqdm

from vocwatch.cli import EX_NOINPUT, EX_NOPERM, settings_from
from vocwatch.config import Settings
from vocwatch.daemon import EX_TEMPFAIL, Daemon, build, check_layout, require_key
from vocwatch.folders import Claimed, walk_files
from vocwatch.ledger import Ledger
from vocwatch.model import Pair, SystemClock
from vocwatch.notify import from_environment
from vocwatch.pairing import Entry, Expired, Rules, is_ignored, plan
from vocwatch.pipeline import error_document


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    daemon = Daemon(settings, notifier=from_environment())
    daemon.install_signal_handlers()
    return daemon.run()


def upload(args: argparse.Namespace) -> int:
    """The daemon's pipeline once over the given files and folders; 0 only if all succeeded."""
    settings = settings_from(args)
    check_layout(settings)
    require_key(settings)
    log = structlog.get_logger("vocwatch.upload")
    # Its own work folder: the daemon may be running on the same config and must not see these claims.
    parts = build(settings, instance=f"{settings.instance}-upload")
    parts.folders.ensure()
    if not parts.folders.lock():
        print(
            f"vocwatch: another 'vocwatch upload' is running with this config ({parts.folders.work})", file=sys.stderr
        )
        parts.close()
        return EX_TEMPFAIL
    outcomes: dict[str, str] = {}
    done = threading.Condition()

    def finished(claimed: Claimed, state: str) -> None:
        with done:
            outcomes[str(claimed.audio)] = state
            done.notify_all()

    parts.pool.on_done = finished
    batches = list(_batches(args.paths, settings))
    missing = [p for p in args.paths if not os.path.lexists(p)]
    for path in missing:
        print(f"vocwatch: {path}: no such file or folder", file=sys.stderr)
    total = sum(len(ready) + len(expired) for _, ready, expired in batches)
    # tqdm's own disable: no bar off a terminal (journald, cron) or with --no-progress.
    bar = tqdm(
        total=total, unit="rec", desc="uploading", file=sys.stderr, disable=not sys.stderr.isatty() or args.no_progress
    )
    parts.pool.start()
    failed = 0
    auth_stop = False
    for origin, ready, expired in batches:
        for gone in expired:
            error = error_document(gone.files[0].name, None, gone.files[0].stem, gone.problem, parts.clock)
            parts.folders.fail_in_place(origin, gone.files, error)
            log.warning("upload.failed", file=str(gone.files[0]), reason=gone.problem.code)
            failed += 1
            bar.update(1)
        for pair in ready:
            claimed = parts.folders.claim(pair, origin)
            if claimed is None:
                failed += 1
                continue
            while not parts.pool.offer(claimed):
                with done:
                    done.wait(timeout=0.5)
                if parts.gate.state().auth_paused:
                    auth_stop = True
                    break
            if auth_stop:
                parts.folders.release(claimed)
                break
            with done:
                bar.update(len(outcomes) + failed - bar.n)
        if auth_stop:
            break
    while not parts.pool.wait_idle(timeout=0.5):
        with done:
            bar.update(len(outcomes) + failed - bar.n)
        if parts.gate.state().auth_paused:
            auth_stop = True
            break
    parts.pool.stop(grace_s=settings.upload.shutdown_grace_seconds if auth_stop else 0)
    bar.update(len(outcomes) + failed - bar.n)
    bar.close()
    parts.close()
    good = sum(1 for s in outcomes.values() if s in ("accepted", "duplicate", "done"))
    bad = total - good
    print(f"vocwatch upload: {good} uploaded, {bad} not ({len(missing)} missing paths)", file=sys.stderr)
    if auth_stop:
        print(
            "vocwatch: the API refused the key (401/403/404): check the API key, api.tenant_id and "
            "api.base_url; unsent recordings were put back",
            file=sys.stderr,
        )
        return EX_NOPERM
    return 0 if bad == 0 and not missing else 1


def _batches(paths: list[Path], settings: Settings) -> Iterator[tuple[Path, list[Pair], list[Expired]]]:
    """Per origin folder: the ready pairs and the files that can never pair (watch.ignore applies)."""
    rules = Rules(settle_s=0.0, pair_timeout_s=0.0, require_sidecar=settings.watch.require_sidecar)
    for path in paths:
        if path.is_dir():
            origin = path
            files = [Path(d, n) for d, names in walk_files(path) for n in names]
        elif os.path.lexists(path):
            origin = path.parent
            files = [path, *(s for s in _sidecars_of(path) if s.exists())]
        else:
            continue
        entries = []
        for file in files:
            rel = PurePosixPath(file.relative_to(origin).as_posix())
            if any(is_ignored(part, settings.watch.ignore) for part in rel.parts):
                continue
            st = file.lstat()
            entries.append(Entry(rel, st.st_size, st.st_mtime_ns, first_seen=0.0, stable_since=0.0))
        decided = plan(entries, now=1.0, rules=rules)
        yield origin, decided.ready, decided.expired


def _sidecars_of(path: Path) -> list[Path]:
    return [path.with_suffix(".json"), path.with_name(path.name + ".json")]


def ledger(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path = settings.ledger.path
    if not path.exists():
        print(
            f"vocwatch: no ledger at {path} (ledger.path); nothing has been uploaded with this config yet",
            file=sys.stderr,
        )
        return EX_NOINPUT
    book = Ledger(path, SystemClock())
    try:
        from vocwatch import ledger_cli

        return ledger_cli.dispatch(args, book, sys.stdout)
    finally:
        book.close()


def simulate(args: argparse.Namespace) -> int:
    from vocwatch.simulator import Faults, SimState, Simulator

    if args.api_key_file:
        key = args.api_key_file.read_text().strip()
    else:
        key = os.environ.get("VOCWATCH_API_KEY") or "sim-key"
    faults = Faults(
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        latency_s=args.latency,
        job_fail_rate=args.job_fail_rate,
    )
    state = SimState(
        api_key=key,
        tenant=args.tenant,
        complete_after_s=args.complete_after,
        faults=faults,
        sink=args.sink,
        seed=args.seed,
    )
    if args.unauthorized_for:
        state.unauthorized_for(args.unauthorized_for)
    sim = Simulator(state, args.host, args.port)
    print(json.dumps({"event": "simulate.listening", "url": sim.url, "tenant": args.tenant}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sim.serve_forever()
    return 0


def demo(args: argparse.Namespace) -> int:
    from vocwatch.demo import run_demo

    return run_demo(args.dir)


def check(args: argparse.Namespace) -> int:
    from vocwatch.checks import run_checks

    return run_checks(args)


def status(args: argparse.Namespace) -> int:
    from vocwatch.checks import job_status

    return job_status(args)
