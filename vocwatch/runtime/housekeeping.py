"""Housekeeping for months of running: done/ retention (folders.done_retention_days) and ledger pruning
(ledger.keep_days), at start and hourly, in bounded batches, with one summary log line per pass.

Retention walks done/ only, folder by folder (never failed/, the inbox, work/ or uploaded/, even when one
of them sits below done/), and deletes a pair only when every file of it is older than the limit. Age is
the file's ctime: a move into done/ (rename, or link and unlink) sets it, so it is when the pair arrived.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from vocwatch.core.model import Clock
from vocwatch.core.pairing import classify
from vocwatch.edges.folders import Folders, walk_files
from vocwatch.edges.ledgers import LedgerStore

DAY_S = 86400.0
EVERY_S = 3600.0
# Files deleted between pauses: a big done/ is cleared without hogging the disk or the CPU.
RETENTION_BATCH = 500
BATCH_PAUSE_S = 0.05


def expired(ctimes: Iterable[float], cutoff: float) -> bool:
    """A pair leaves done/ only when all of its files are older than the cutoff."""
    values = list(ctimes)
    return bool(values) and max(values) < cutoff


class Housekeeping:
    def __init__(
        self,
        *,
        folders: Folders,
        ledger: LedgerStore,
        clock: Clock,
        retention_days: float,
        keep_days: float,
        keep_out: Iterable[Path] = (),
        every_s: float = EVERY_S,
        log: Any = None,
    ) -> None:
        self._folders = folders
        self._ledger = ledger
        self._clock = clock
        self._retention_s = retention_days * DAY_S
        self._keep_s = keep_days * DAY_S
        self._keep_out = {p.resolve() for p in keep_out}
        self._every = every_s
        self._log = log or structlog.get_logger("vocwatch.runtime.housekeeping")
        self._stop = threading.Event()
        self.passes = 0
        self._said_vacuum = False
        self.last_progress = clock.monotonic()

    @property
    def needed(self) -> bool:
        return self._retention_s > 0 or self._keep_s > 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        due = self._clock.monotonic()
        while not self._stop.is_set():
            if self._clock.monotonic() >= due:
                try:
                    self.run_once()
                except Exception:  # a full disk or an odd folder must not end housekeeping for good
                    self._log.exception("housekeeping.error")
                due = self._clock.monotonic() + self._every
            self.last_progress = self._clock.monotonic()
            self._stop.wait(1.0)

    def run_once(self) -> dict[str, int]:
        """One pass: retention, then pruning; logs one summary line and returns its counts."""
        summary: dict[str, int] = {}
        if self._retention_s > 0:
            summary.update(self.retain(self._clock.time() - self._retention_s))
        if self._keep_s > 0:
            summary["ledger_rows_pruned"] = self._ledger.prune(self._clock.time() - self._keep_s, stop=self._stop)
            if summary["ledger_rows_pruned"] and not self._ledger.incremental and not self._said_vacuum:
                self._said_vacuum = True
                self._log.info(
                    "ledger.space_reused",
                    ledger=str(self._ledger.path),
                    note="this ledger predates incremental vacuum: pruned space is reused for new rows, not "
                    "given back; to shrink the file once, stop vocwatch and run "
                    "sqlite3 LEDGER 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;'",
                )
        self.passes += 1
        if summary:
            self._log.info(
                "housekeeping.pass",
                retention_days=self._retention_s / DAY_S,
                keep_days=self._keep_s / DAY_S,
                **summary,
            )
        return summary

    def retain(self, cutoff: float) -> dict[str, int]:
        """Delete pairs in done/ whose files all changed before ``cutoff`` (epoch seconds)."""
        from vocwatch.core.states import Stage

        done = self._folders.stages[Stage.DONE]
        skip = self._keep_out | {p.resolve() for p in (self._folders.inbox, self._folders.work.parent)}
        skip |= {p.resolve() for s, p in self._folders.stages.items() if s != Stage.DONE}
        pairs = files = nbytes = since_pause = 0
        folders: list[str] = []
        for dirpath, names in walk_files(done):
            if self._stop.is_set():
                break
            here = Path(dirpath).resolve()
            if any(here == s or s in here.parents for s in skip):
                continue
            folders.append(dirpath)
            groups: dict[str, list[tuple[str, os.stat_result]]] = {}
            for name in names:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                groups.setdefault(classify(name)[1], []).append((name, st))
            for members in groups.values():
                if not expired((st.st_ctime for _, st in members), cutoff):
                    continue
                # The recording first, its sidecar last: whatever a crash leaves is the smaller half.
                for name, st in sorted(members, key=lambda m: classify(m[0])[0] == "sidecar"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        files += 1
                        nbytes += st.st_size
                        since_pause += 1
                pairs += 1
                if since_pause >= RETENTION_BATCH:
                    since_pause = 0
                    if self._stop.wait(BATCH_PAUSE_S):
                        break
        removed = 0
        for dirpath in sorted(folders, key=len, reverse=True):  # empty date folders (done_layout) go too
            if Path(dirpath) != done:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
                    removed += 1
        return {"done_pairs_deleted": pairs, "done_files_deleted": files, "done_bytes_deleted": nbytes,
                "done_folders_removed": removed}  # fmt: skip
