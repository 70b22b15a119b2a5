"""``vocwatch upload``: the daemon's pipeline once over given files and folders (a backfill)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import structlog
from tqdm import tqdm

from vocwatch.cli.common import EX_NOPERM, EX_TEMPFAIL, settings_from
from vocwatch.core.model import Pair
from vocwatch.core.pairing import Entry, Expired, Rules, is_ignored, plan
from vocwatch.edges.config import Settings
from vocwatch.edges.folders import Claimed
from vocwatch.runtime.daemon import build, check_layout, require_key
from vocwatch.runtime.pipeline import error_document


def main(args: argparse.Namespace) -> int:
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
            files = [Path(d, n) for d, _, names in os.walk(path) for n in names]
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
