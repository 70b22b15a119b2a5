"""The backfill's runtime (``vocwatch upload``): recover its own work folder, claim, upload, drain on stop.

Like the daemon: leftovers in work/ are offered first, a lone half goes back where it came from, and a stop
request puts queued pairs back and lets uploads in flight finish until one deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog

from vocwatch.core.model import End, Pair
from vocwatch.core.pairing import Expired, classify, printable
from vocwatch.edges.folders import Claimed
from vocwatch.runtime.daemon import SHUTDOWN_MARGIN_S, Parts
from vocwatch.runtime.unpaired import fail_unpaired

GOOD = frozenset({End.ACCEPTED, End.DUPLICATE, End.DONE})
Batch = tuple[Path, list[Pair], list[Expired]]


class Origins:
    """Where each claim in the backfill's work folder came from: JSON lines beside that folder.

    A claim whose line was lost (a crash right after the rename) goes back to ``fallback``, the inbox.
    """

    def __init__(self, work: Path, fallback: Path) -> None:
        self.path = work.with_name(work.name + ".origins.jsonl")
        self._work = work
        self._fallback = fallback
        self._known: dict[str, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    self._known[entry["file"]] = Path(entry["origin"])

    def record(self, claimed: Claimed) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for rel in (claimed.pair.audio, claimed.pair.sidecar):
                if rel is not None:
                    self._known[str(rel)] = claimed.origin
                    fh.write(json.dumps({"file": str(rel), "origin": str(claimed.origin)}) + "\n")

    def placed(self, claimed: Claimed) -> Claimed:
        """The same claim with its recorded origin."""
        return Claimed(claimed.pair, claimed.root, self._known.get(str(claimed.pair.audio), self._fallback))

    def tidy(self) -> None:
        """Keep only the lines of files still in work/ (none left: no file)."""
        left = {rel: origin for rel, origin in self._known.items() if os.path.lexists(self._work / rel)}
        if not left:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        tmp = self.path.with_name("." + self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps({"file": r, "origin": str(o)}) + "\n" for r, o in left.items()))
        os.replace(tmp, self.path)


@dataclass
class Summary:
    """How a backfill ended; ``stopped_by`` is the signal number that interrupted it, if any."""

    total: int = 0
    outcomes: dict[str, End] = field(default_factory=dict)
    failed_early: int = 0  # never reached a worker: expired halves, claims lost to another process
    auth_stop: bool = False
    stopped_by: int | None = None
    put_back: int = 0
    left_in_work: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def good(self) -> int:
        return sum(1 for s in self.outcomes.values() if s in GOOD)

    @property
    def done_count(self) -> int:
        return len(self.outcomes) + self.failed_early


class Backfill:
    """One run over given batches with its own work folder; stop() (from a signal handler) drains it."""

    def __init__(self, parts: Parts, *, require_sidecar: bool, on_progress: Callable[[int], None]) -> None:
        self.parts = parts
        self.summary = Summary()
        self._require_sidecar = require_sidecar
        self._on_progress = on_progress
        self._origins = Origins(parts.folders.work, parts.folders.inbox)
        self._stop_signal: int | None = None
        self._done = threading.Condition()
        self._log = structlog.get_logger("vocwatch.runtime.backfill")
        parts.pool.on_done = self._finished

    def stop(self, signum: int) -> None:
        """Ask the run to drain; safe in a signal handler (sets a flag, takes no lock)."""
        if self._stop_signal is None:
            self._stop_signal = signum

    @property
    def stopping(self) -> bool:
        return self._stop_signal is not None or self.summary.auth_stop

    def _finished(self, claimed: Claimed, state: End) -> None:
        with self._done:
            self.summary.outcomes[_key(claimed)] = state
            self._done.notify_all()

    def _wait(self) -> None:
        """Wait a little for a worker to finish something; then report progress and look at the gate."""
        with self._done:
            self._done.wait(timeout=0.2)
        self._on_progress(self.summary.done_count)
        if self.parts.gate.state().auth_paused:
            self.summary.auth_stop = True

    def run(self, batches: Sequence[Batch]) -> Summary:
        """Recover work/, then claim and offer every ready pair; returns once idle or drained."""
        s = self.summary
        pool = self.parts.pool
        lease = self.parts.lease
        if lease is not None:  # the fleet ledger: claims need a live lease (it takes over no peer)
            if not lease.acquire():
                return self._drain()
            lease.start()
        pool.start()
        leftovers = self._recover()
        # A leftover is also listed again when its source stayed (--keep-sources): one recording, counted once.
        recovered = {_key(c) for c in leftovers}
        listed = {str(origin / pair.audio) for origin, ready, _ in batches for pair in ready}
        s.total = len(recovered | listed) + sum(len(expired) for _, _, expired in batches)
        for leftover in leftovers:
            if self.stopping:  # not offered yet: back where it came from, like a queued pair
                self.parts.folders.release(leftover)
                s.put_back += 1
                continue
            self._log.info("claim.recovered", file=str(leftover.pair.audio), origin=str(leftover.origin))
            self._offer(leftover)
        for origin, ready, expired in batches:
            if self.stopping:
                break
            self._fail_expired(origin, expired)
            for pair in ready:
                if self.stopping:
                    break
                if str(origin / pair.audio) in recovered:
                    continue  # the leftover in work/ is this very pair, offered above
                claimed = self._claim(pair, origin)
                if claimed is None:
                    s.failed_early += 1
                    continue
                self._origins.record(claimed)
                self._offer(claimed)
        while not self.stopping and not pool.wait_idle(timeout=0):
            self._wait()
        return self._drain()

    def _claim(self, pair: Pair, origin: Path) -> Claimed | None:
        """Claim it; while a pair of the same name from another folder is still in work/, wait for it to move
        on, then try again (the daemon takes such a pair at its next scan; a backfill has no next scan)."""
        folders, pool = self.parts.folders, self.parts.pool
        blocker = folders.work / pair.audio
        claimed = folders.claim(pair, origin)
        while claimed is None and not self.stopping and os.path.lexists(blocker):
            if pool.wait_idle(timeout=0):
                # Nothing queued or in flight can move it now; one more try, for a move that ended just now.
                claimed = folders.claim(pair, origin)
                if claimed is None and os.path.lexists(blocker):
                    self._log.error(
                        "claim.blocked",
                        file=printable(str(pair.audio)),
                        origin=printable(str(origin)),
                        blocker=printable(str(blocker)),
                        hint="something no worker moves holds its name in work/: move it away and run again",
                    )
                return claimed
            self._wait()
            claimed = folders.claim(pair, origin)
        return claimed

    def _recover(self) -> list[Claimed]:
        """What an interrupted run left in work/, to take first. Lone halves too: the pipeline decides
        from the ledger whether one is a move cut short (finish it) or a claim cut short (put it back)."""
        taken: list[Claimed] = []
        for found, whole in self.parts.folders.claims_in_work(self._require_sidecar):
            claimed = self._origins.placed(found)
            if whole or classify(claimed.pair.audio.name)[0] == "audio":
                taken.append(claimed)
            else:  # a lone sidecar: a claim cut short (claims move the sidecar first)
                self._log.info("claim.half_returned", file=str(claimed.pair.audio), origin=str(claimed.origin))
                self.parts.folders.release(claimed)
        return taken

    def _offer(self, claimed: Claimed) -> bool:
        """Queue it, waiting for room; on a stop request put it back instead and return False."""
        while not self.parts.pool.offer(claimed):
            if self.stopping:
                self.parts.folders.release(claimed)
                self.summary.put_back += 1
                return False
            self._wait()
        return True

    def _fail_expired(self, origin: Path, expired: list[Expired]) -> None:
        p = self.parts
        for gone in expired:
            first: PurePosixPath = gone.files[0]
            try:
                problem = fail_unpaired(p.folders, p.ledger, origin, gone, p.clock, self._log)
            except OSError as exc:  # still where it was: the summary counts it as not sent
                self._log.error("files.move_failed", file=printable(str(first)), error=str(exc))
                self.summary.failed_early += 1
                continue
            if problem is not None:
                self._log.warning("upload.failed", file=printable(str(first)), reason=problem.code)
                self.summary.failed_early += 1

    def _drain(self) -> Summary:
        """Stop the pool against one deadline; close the ledger and client only if no worker outlived it."""
        s, pool = self.summary, self.parts.pool
        s.stopped_by = self._stop_signal
        if self.stopping:
            self._log.info("upload.interrupted", signal=s.stopped_by, queued=pool.queued, in_flight=pool.busy)
        grace = self.parts.settings.upload.shutdown_grace_seconds if self.stopping else 0.0
        s.put_back += pool.cancel()
        if not pool.join(self.parts.clock.monotonic() + grace + SHUTDOWN_MARGIN_S):
            s.left_in_work = pool.in_flight()
            self._log.warning(
                "upload.abandoned",
                uploads=s.left_in_work,
                note="still running after upload.shutdown_grace_seconds; left in work/, the next "
                "'vocwatch upload' sends them again with the same Idempotency-Key",
            )
        if self.parts.lease is not None:
            self.parts.lease.cancel()
            self.parts.lease.join(self.parts.clock.monotonic() + SHUTDOWN_MARGIN_S)
        s.put_back += sum(1 for state in s.outcomes.values() if state == End.RELEASED)
        self._on_progress(s.done_count)
        self._origins.tidy()
        if not s.left_in_work:
            self.parts.close()
        return s


def _key(claimed: Claimed) -> str:
    """A recording of this run by where it came from: two folders may each hold a call.wav."""
    return str(claimed.origin / claimed.pair.audio)
