"""``vocwatch upload``: the daemon's pipeline once over given files and folders (a backfill)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tqdm import tqdm
from tqdm.contrib import DummyTqdmFile

from vocwatch.cli.common import EX_NOPERM, EX_TEMPFAIL, settings_from
from vocwatch.core.model import Pair
from vocwatch.core.pairing import Entry, Expired, Rules, is_ignored, plan
from vocwatch.edges.config import Settings
from vocwatch.edges.folders import walk_files
from vocwatch.edges.logs import configure
from vocwatch.runtime.backfill import Backfill, Summary
from vocwatch.runtime.daemon import build, check_layout, require_key


def main(args: argparse.Namespace) -> int:
    """The daemon's pipeline once over the given files and folders; 0 only if all succeeded. Each pair moves
    to done/ (or failed/); with --keep-sources the sources stay and those folders get a link or a copy.

    SIGINT or SIGTERM drains it like the daemon and exits 128 + the signal (130, 143); a second one stops at once.
    """
    settings = settings_from(args)
    check_layout(settings)
    require_key(settings)
    # Its own work folder: the daemon may be running on the same config and must not see these claims.
    parts = build(settings, instance=f"{settings.instance}-upload")
    parts.folders.ensure()
    if not parts.folders.lock():
        print(
            f"vocwatch: another 'vocwatch upload' is running with this config ({parts.folders.work})", file=sys.stderr
        )
        parts.close()
        return EX_TEMPFAIL
    missing = [p for p in args.paths if not os.path.lexists(p)]
    for path in missing:
        print(f"vocwatch: {path}: no such file or folder", file=sys.stderr)
    batches = list(_batches(args.paths, settings))
    staging = parts.folders.work.with_name(f".{parts.folders.work.name}.sources")
    if args.keep_sources:
        gone: list[Path] = []
        batches = [_stage(batch, staging / str(i), gone) for i, batch in enumerate(batches)]
        for path in gone:
            print(
                f"vocwatch: {path}: gone before it could be sent (deleted since it was listed); not sent",
                file=sys.stderr,
            )
        missing += gone
    # tqdm's own disable: no bar off a terminal (journald, cron) or with --no-progress.
    bar = tqdm(
        total=sum(len(ready) + len(expired) for _, ready, expired in batches),
        unit="rec",
        desc="uploading",
        file=sys.stderr,
        disable=not sys.stderr.isatty() or args.no_progress,
    )
    if not bar.disable:  # log lines go above the bar, never into it (tqdm clears it, writes, redraws)
        configure(settings.log.level, settings.log.format, redact=settings.log.redact, stream=DummyTqdmFile(sys.stderr))
    backfill = Backfill(
        parts, require_sidecar=settings.watch.require_sidecar, on_progress=lambda n: bar.update(n - bar.n)
    )

    def on_signal(signum: int, _frame: object) -> None:
        backfill.stop(signum)
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = backfill.run(batches)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    bar.total = summary.total
    bar.close()
    configure(settings.log.level, settings.log.format, redact=settings.log.redact)
    if args.keep_sources and not summary.left_in_work:
        shutil.rmtree(staging, ignore_errors=True)  # what is left there (put back, never sent) is in the sources
    return _report(summary, missing)


def _report(summary: Summary, missing: list[Path]) -> int:
    """Print one summary line (and what to do); the exit status."""
    good = summary.good
    bad = summary.total - good
    if summary.stopped_by is not None:
        name = signal.Signals(summary.stopped_by).name
        print(
            f"vocwatch upload: interrupted by {name}: {good} uploaded, {bad} not (left where they were, or put "
            f"back there), {len(summary.left_in_work)} still uploading (left in work/); run the same command "
            "again to send the rest",
            file=sys.stderr,
        )
        return 128 + summary.stopped_by
    print(f"vocwatch upload: {good} uploaded, {bad} not ({len(missing)} missing paths)", file=sys.stderr)
    if summary.auth_stop:
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


def _stage(
    batch: tuple[Path, list[Pair], list[Expired]], folder: Path, gone: list[Path]
) -> tuple[Path, list[Pair], list[Expired]]:
    """The batch with ``folder`` as its origin, holding a hard link of each of its files (a copy where the
    kernel refuses the link: another file system, fs.protected_hardlinks): what the run moves are these.
    A pair whose file vanished since the listing is left out, that file named in ``gone``."""
    origin, ready, expired = batch
    staged = [p for p in ready if _link_all(origin, folder, [f for f in (p.audio, p.sidecar) if f is not None], gone)]
    lonely = [e for e in expired if _link_all(origin, folder, list(e.files), gone)]
    return folder, staged, lonely


def _link_all(origin: Path, folder: Path, rels: list[PurePosixPath], gone: list[Path]) -> bool:
    """Link (or copy) each of ``rels`` from ``origin`` into ``folder``; False, none of them staged, if one is gone."""
    for rel in rels:
        src, dst = origin / rel, folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(dst):
            os.unlink(dst)  # a stale stage of an earlier run that ended before tidying
        try:
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                    raise
                shutil.copy2(src, dst, follow_symlinks=False)
        except FileNotFoundError:  # deleted (by its producer, an operator) since it was listed
            gone.append(src)
            for done in rels:
                (folder / done).unlink(missing_ok=True)
            return False
    return True


def _sidecars_of(path: Path) -> list[Path]:
    return [path.with_suffix(".json"), path.with_name(path.name + ".json")]
