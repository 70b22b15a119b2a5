"""Group commit: every writer returns only after an fsync that began after its write; writers share them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.fakes import FakeClock

from vocwatch.core.states import State
from vocwatch.edges.groupsync import FolderSyncs, GroupSync
from vocwatch.edges.ledger import Ledger

DEADLINE_S = 10.0


def test_each_waiter_is_covered_by_an_fsync_that_began_after_its_write_and_waiters_share_one() -> None:
    covered_at_start: list[int] = []  # how many writes each fsync covered when it began
    first_started = threading.Event()
    release_first = threading.Event()

    def sync() -> None:
        covered_at_start.append(group._written)  # tickets handed out when this fsync began
        if len(covered_at_start) == 1:
            first_started.set()
            assert release_first.wait(DEADLINE_S)

    group = GroupSync(sync)
    returned: dict[int, int] = {}  # ticket -> fsyncs begun by the time its wait returned

    def writer() -> None:
        ticket = group.ticket()
        group.wait(ticket)
        returned[ticket] = len(covered_at_start)

    leader = threading.Thread(target=writer)
    leader.start()
    assert first_started.wait(DEADLINE_S)  # the leader's fsync is in progress: the next writers queue behind it
    others = [threading.Thread(target=writer) for _ in range(6)]
    for t in others:
        t.start()
    with group._cond:  # all six have written and wait (condition, not a sleep)
        assert group._cond.wait_for(lambda: group._written == 7, timeout=DEADLINE_S)
    release_first.set()
    for t in [leader, *others]:
        t.join(DEADLINE_S)
        assert not t.is_alive()
    assert group.flushes == 2  # seven writes, two fsyncs: the six behind the first shared the second
    assert covered_at_start == [1, 7]
    for ticket, fsyncs in returned.items():
        # The fsync that covered this ticket began after it was written.
        assert any(covered >= ticket for covered in covered_at_start[:fsyncs]), (ticket, covered_at_start)


def test_a_failed_fsync_raises_in_its_leader_and_the_next_waiter_syncs_again() -> None:
    calls: list[int] = []

    def sync() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    group = GroupSync(sync)
    ticket = group.ticket()
    with pytest.raises(OSError):
        group.wait(ticket)
    group.wait(ticket)  # not durable yet: tried again
    assert len(calls) == 2 and group.idle
    group.wait(ticket)  # durable now: nothing to do
    assert len(calls) == 2


def test_folder_syncs_fsync_the_folder_and_skip_one_that_cannot_be_opened(tmp_path: Path) -> None:
    syncs = FolderSyncs()
    syncs.sync(tmp_path)
    syncs.sync(tmp_path / "missing")  # as before: a folder that cannot be opened is skipped
    assert syncs._groups[str(tmp_path)].flushes == 1


def test_the_ledger_flushes_its_wal_for_durable_commits_only(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", FakeClock(), holder="host-1")
    row = ledger.claim("rec-1", "ab" * 32, "a.wav", 10)
    assert row is not None
    row = ledger.begin_attempt(row)
    assert ledger._wal.flushes == 0  # claimed and uploading are not durable steps
    row = ledger.transition(row, State.ACCEPTED, job_id="job-1", destination="done/a.wav")
    assert ledger._wal.flushes == 1
    ledger.close()
    again = Ledger(tmp_path / "ledger.db", FakeClock(), holder="host-1")
    assert [r.state for r in again.find("rec-1")] == [State.ACCEPTED]
    again.close()


def test_workers_committing_at_once_each_get_their_row_durable(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", FakeClock(), holder="host-1")
    rows = [ledger.claim(f"rec-{i}", f"{i:064x}", f"{i}.wav", 10) for i in range(16)]
    barrier = threading.Barrier(16)

    def accept(i: int) -> None:
        row = rows[i]
        assert row is not None
        barrier.wait(DEADLINE_S)
        ledger.transition(ledger.begin_attempt(row), State.ACCEPTED, job_id=f"job-{i}", destination=f"done/{i}")

    threads = [threading.Thread(target=accept, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive()
    assert 1 <= ledger._wal.flushes <= 16
    assert sorted(r.job_id or "" for r in ledger.iter_all()) == sorted(f"job-{i}" for i in range(16))
    ledger.close()
