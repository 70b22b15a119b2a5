"""The fleet lease (ledger.url set): hold this daemon's lease, renew it, and take over a gone peer's pairs.

Renewed every ``lease_seconds / 3``. A peer whose lease expired (gone longer than ``ledger.lease_seconds``)
and whose work folder this daemon can see is taken over: its lease and its open rows first (one
transaction, so the peer can no longer move them), then its files are renamed into this work folder, where
the planner offers them as leftovers and the pipeline decides each one as after a restart.

A daemon that finds its own lease taken over (it was partitioned or paused, not dead) has already lost its
claims: every send and claim needs a live lease, so it uploads none of them. It waits until the taker is
done, then holds a fresh lease and goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from vocwatch.core.model import Clock
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledgers import LedgerUnavailableError

if TYPE_CHECKING:
    from vocwatch.edges.ledger_pg import PgLedger


class LeaseKeeper:
    """A runtime service; acquire() once before anything is claimed, then start()."""

    def __init__(
        self,
        ledger: PgLedger,
        folders: Folders,
        clock: Clock,
        *,
        on_adopted: Callable[[], None] = lambda: None,
        takeover: bool = True,
        log: Any = None,
    ) -> None:
        self.name = "lease"
        self._ledger = ledger
        self._folders = folders
        self._clock = clock
        self._every = max(0.2, ledger.lease_seconds / 3)
        self.on_adopted = on_adopted  # the planner's rescan: adopted pairs are offered at once
        self._takeover = takeover
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._log = log or structlog.get_logger("vocwatch.runtime.lease")
        self.lost = False  # our lease was taken over and we do not hold a new one yet
        self.last_progress = clock.monotonic()

    def acquire(self) -> bool:
        """Hold this daemon's lease, waiting while a peer takes over an earlier one; False if stopped first."""
        told = False
        while not self._stop.is_set():
            try:
                if self._ledger.acquire_lease():
                    if told or self.lost:
                        self._log.info("lease.held", holder=self._ledger.holder)
                    self.lost = False
                    return True
            except LedgerUnavailableError:
                return False
            if not told:
                told = True
                self._log.warning(
                    "lease.waiting",
                    holder=self._ledger.holder,
                    note="a peer is taking over this instance's earlier claims; waiting for it to finish",
                )
            self._stop.wait(self._every)
        return False

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()

    def join(self, deadline: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout=max(0.0, deadline - self._clock.monotonic()))
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.tick()
            except LedgerUnavailableError:
                return
            except Exception:  # a bug must not end the renewals: the daemon would lose its claims
                self._log.exception("lease.error")
            self.last_progress = self._clock.monotonic()

    def tick(self) -> None:
        """Renew (or notice the loss and wait for a fresh lease), then take over whoever is gone."""
        if not self._ledger.renew_lease():
            self.lost = True
            self._log.warning(
                "lease.lost",
                holder=self._ledger.holder,
                note="a peer took over this instance's claims after its lease expired (paused or partitioned); "
                "they are the peer's now and none of them is sent from here",
            )
            if not self.acquire():
                return
        if self._takeover:
            self.take_over()

    def take_over(self) -> int:
        """Adopt the pairs of every peer gone longer than its lease whose work folder is here; how many files."""
        since = self._ledger.connected_since
        # After an outage every lease looks expired: give each peer one lease period to renew first.
        if since is None or self._clock.monotonic() - since < self._ledger.lease_seconds:
            return 0
        moved_total = 0
        for victim in self._ledger.expired_leases():
            if not (self._folders.work.parent / victim).is_dir():
                continue  # not on this share: a daemon that can see it takes it over
            rows = self._ledger.begin_takeover(victim)
            if rows is None:
                continue  # another peer got there first
            moved, left = self._folders.adopt(victim)
            moved_total += moved
            if left == 0:
                self._ledger.end_takeover(victim)
            self._log.warning(
                "lease.taken_over",
                peer=victim,
                rows=rows,
                files=moved,
                left=left,
                note="the peer was gone longer than ledger.lease_seconds; its pairs are decided here as after a "
                "restart" + ("" if left == 0 else "; names taken here stay in its folder for the next pass"),
            )
            if moved:
                self.on_adopted()
        return moved_total
