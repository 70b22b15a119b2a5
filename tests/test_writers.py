"""Producers as they really write: slowly, in pieces, with several handles, replacing or deleting files.

A file still being written is never taken; whatever the writer does, the API gets each recording
once and whole, and nothing half-written reaches done/.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
from conftest import Spool, drop, running, wait_for
from ingest_support import put, put_atomic, sha, sidecar, slow_write, wav_bytes

from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.ledger import Ledger
from vocwatch.testing.simulator import Simulator

SLOW = wav_bytes(300, 120_000)  # about 3 s of writing at 15 chunks of 8 KB every 0.2 s


def assert_uploaded_once_whole(
    spool: Spool, sim: Simulator, name: str, data: bytes, rows: tuple[str, ...] = ("done",)
) -> None:
    [got] = sim.state.received
    assert (got.sha256, got.size) == (sha(data), len(data))
    assert (spool.done / name).read_bytes() == data
    assert tuple(row.state for row in spool.rows()) == rows
    # The ledger knows its minutes: what the writer wrote, read from the recording itself.
    assert all(row.duration_seconds and row.codec and row.sample_rate for row in spool.rows())


@pytest.mark.parametrize(
    ("reopen", "chunks", "pause_s"),
    [(False, 15, 0.2), (True, 30, 0.1)],
    ids=["one_handle", "reopened_for_each_chunk"],
)
def test_slow_writer_is_taken_once_whole_soon_after_it_closes(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], reopen: bool, chunks: int, pause_s: float
) -> None:
    # With a 30 s settle wait, only the close rule (pairing.py, rule 3) can take it within the deadline;
    # the reopening writer closes after every chunk and must still never be taken between them.
    with running(make_settings(watch__settle_seconds=30)):
        put_atomic(spool.inbox / "slow.json", sidecar("slow"))
        slow_write(spool.inbox / "slow.wav", SLOW, chunks=chunks, pause_s=pause_s, reopen=reopen)
        wait_for(lambda: (spool.done / "slow.wav").exists(), timeout=10, what="taken well before settle_seconds")
    assert_uploaded_once_whole(spool, sim, "slow.wav", SLOW)


def test_slow_writer_without_close_events_is_taken_by_the_settle_rule(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # Polling sees no opens or closes: only the size/mtime settle check stands between a writer and us.
    settings = make_settings(watch__mode="poll", watch__poll_interval_seconds=0.1, watch__settle_seconds=0.6)
    with running(settings) as daemon:
        assert daemon.watcher.kind == "poll"
        put_atomic(spool.inbox / "slow.json", sidecar("slow"))
        slow_write(spool.inbox / "slow.wav", SLOW, chunks=15, pause_s=0.2)
        wait_for(lambda: (spool.done / "slow.wav").exists(), what="taken once settled")
    assert_uploaded_once_whole(spool, sim, "slow.wav", SLOW)


def test_a_close_while_another_handle_is_open_does_not_count(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    head, tail = SLOW[:-8000], SLOW[-8000:]
    with running(make_settings(watch__settle_seconds=30)):
        put_atomic(spool.inbox / "two.json", sidecar("two"))
        first = open(spool.inbox / "two.wav", "wb")  # noqa: SIM115 - two handles are the point
        second = open(spool.inbox / "two.wav", "r+b")  # noqa: SIM115
        first.write(head)
        first.close()
        threading.Event().wait(2.0)  # the second writer idles past the close grace, then finishes
        second.seek(len(head))
        second.write(tail)
        second.close()
        wait_for(lambda: (spool.done / "two.wav").exists(), timeout=10, what="taken after the last close")
    assert_uploaded_once_whole(spool, sim, "two.wav", SLOW)


@pytest.mark.parametrize(
    ("ignore", "temp_name"),
    [(None, ".call.wav.tmp"), (None, "call.wav.part"), (["*.wip"], "call.wav.wip")],
    ids=["dotfile_tmp", "part_suffix", "configured_pattern"],
)
def test_atomic_drop_is_taken_at_once(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], ignore: list[str] | None, temp_name: str
) -> None:
    overrides = {"watch__settle_seconds": 30} | ({"watch__ignore": ignore} if ignore else {})
    audio = wav_bytes(311)
    with running(make_settings(**overrides)):
        put_atomic(spool.inbox / "call.json", sidecar("call"), temp_name.replace("wav", "json"))
        put_atomic(spool.inbox / "call.wav", audio, temp_name)
        wait_for(lambda: (spool.done / "call.wav").exists(), timeout=10, what="taken without the settle wait")
    assert_uploaded_once_whole(spool, sim, "call.wav", audio)


def test_recording_replaced_while_waiting_is_taken_as_replaced(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    first, second = wav_bytes(320), wav_bytes(321)
    assert len(first) == len(second)
    with running(make_settings(watch__settle_seconds=1)):
        put(spool.inbox / "swap.wav", first)
        put(spool.inbox / ".swap.wav.new", second)
        stamp = os.stat(spool.inbox / "swap.wav")
        os.utime(spool.inbox / ".swap.wav.new", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size, same mtime
        os.rename(spool.inbox / ".swap.wav.new", spool.inbox / "swap.wav")
        put_atomic(spool.inbox / "swap.json", sidecar("swap"))
        wait_for(lambda: (spool.done / "swap.wav").exists(), what="the replacement taken")
    assert_uploaded_once_whole(spool, sim, "swap.wav", second)


def test_recording_deleted_while_waiting_is_never_sent(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(watch__settle_seconds=1, watch__pair_timeout_seconds=1)
    with running(settings):
        put(spool.inbox / "gone.wav", wav_bytes(330))
        put(spool.inbox / "gone.json", sidecar("gone"))
        os.unlink(spool.inbox / "gone.wav")
        wait_for(lambda: (spool.failed / "gone.error.json").exists(), what="the sidecar left alone fails")
        drop(spool.inbox, "next.wav", "next")
        wait_for(lambda: (spool.done / "next.wav").exists(), what="the next pair still taken")
    assert [r.metadata["id"] for r in sim.state.received] == ["next"]
    assert spool.files(spool.failed) == ["gone.error.json", "gone.json"]
    assert '"missing_recording"' in (spool.failed / "gone.error.json").read_text()


def test_recording_that_grows_while_uploading_is_put_back_and_sent_whole(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # Big enough that the upload cannot sit whole in socket buffers while the API stalls.
    data, more = wav_bytes(340, 20_000_000), b"\x00\x01" * 200_000
    sim.state.faults.latency_s = 1.5
    with running(make_settings()):
        put_atomic(spool.inbox / "grow.json", sidecar("grow"))
        writer = open(spool.inbox / ".grow.wav.tmp", "wb")  # noqa: SIM115 - the producer keeps its handle
        writer.write(data)
        writer.flush()
        os.rename(spool.inbox / ".grow.wav.tmp", spool.inbox / "grow.wav")
        wait_for(lambda: [r.state for r in spool.rows()] == ["uploading"], what="the upload under way")
        writer.write(more)  # the producer was not done after all
        writer.close()
        sim.state.faults.latency_s = 0
        wait_for(lambda: (spool.done / "grow.wav").exists(), timeout=30, what="the whole recording taken")
    assert_uploaded_once_whole(spool, sim, "grow.wav", data + more)
    # One row for the recording: put back once, then done with the whole content.
    [row] = spool.rows()
    book = Ledger(spool.ledger_path, SystemClock())
    events = [event for _, event, _ in book.events(row.id)]
    book.close()
    assert events.count("released") == 1 and events[-1] == "done"
