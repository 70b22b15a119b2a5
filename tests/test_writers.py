"""Producers as they really write: slowly, in pieces, with several handles, replacing or deleting files,
and real programs (ffmpeg recording in real time, cp, rsync).

A file still being written, or still held open by its writer, is never taken; whatever the writer does,
the API gets each recording once and whole, and nothing half-written reaches done/ (pairing.py's rules).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import imageio_ffmpeg
import pytest
from conftest import Spool, drop, running, wait_for
from ingest_support import captured_log, put, put_atomic, sha, sidecar, slow_write, wav_bytes

from vocwatch.edges import watcher
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.folders import Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime import pipeline, planner
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
    ("reopen", "pause_s", "settle_s"),
    [(False, 0.5, 0.2), (True, 0.1, 1.0)],
    ids=["one_handle_pausing_longer_than_settle", "reopened_for_each_chunk"],
)
def test_slow_writer_is_taken_once_whole_after_it_closes(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], reopen: bool, pause_s: float, settle_s: float
) -> None:
    # One handle, pausing longer than the settle wait: only the hold (rule 3) keeps it. A writer that
    # closes after every chunk holds nothing between them: only the settle wait (rule 1) keeps it.
    with running(make_settings(watch__settle_seconds=settle_s)):
        put_atomic(spool.inbox / "slow.json", sidecar("slow"))
        slow_write(spool.inbox / "slow.wav", SLOW, chunks=8, pause_s=pause_s, reopen=reopen)
        wait_for(lambda: (spool.done / "slow.wav").exists(), what="taken once closed and settled")
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
    # The second writer idles past the settle wait after the first one's close: the lease sees it.
    head, tail = SLOW[:-8000], SLOW[-8000:]
    with running(make_settings(watch__settle_seconds=0.5)):
        put_atomic(spool.inbox / "two.json", sidecar("two"))
        first = open(spool.inbox / "two.wav", "wb")  # noqa: SIM115 - two handles are the point
        second = open(spool.inbox / "two.wav", "r+b")  # noqa: SIM115
        first.write(head)
        first.close()
        threading.Event().wait(2.0)  # the second writer's own pace: it idles past the settle wait, then finishes
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


def claimed_copy(spool: Spool, name: str) -> Path | None:
    return next(iter(spool.work.rglob(name)), None)


def test_recording_written_after_its_claim_is_put_back_and_sent_whole(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # A file taken must not be written any more: a writer that appears after the claim (here it opens
    # the copy in work/ and appends) changes the size on the pipeline's descriptor; the upload is
    # abandoned and the pair put back. Big enough that the upload cannot sit whole in socket buffers.
    data, more = wav_bytes(340, 20_000_000), b"\x00\x01" * 200_000
    sim.state.faults.latency_s = 1.5
    with running(make_settings()):
        put_atomic(spool.inbox / "grow.json", sidecar("grow"))
        put_atomic(spool.inbox / "grow.wav", data)
        wait_for(lambda: [r.state for r in spool.rows()] == ["uploading"], what="the upload under way")
        copy = claimed_copy(spool, "grow.wav")
        assert copy is not None
        with open(copy, "ab") as late:  # the producer was not done after all
            late.write(more)
        sim.state.faults.latency_s = 0
        wait_for(lambda: (spool.done / "grow.wav").exists(), timeout=30, what="the whole recording taken")
    assert_uploaded_once_whole(spool, sim, "grow.wav", data + more)
    # One row for the recording: put back once, then done with the whole content.
    [row] = spool.rows()
    book = Ledger(spool.ledger_path, SystemClock())
    events = [event for _, event, _ in book.events(row.id)]
    book.close()
    assert events.count("released") == 1 and events[-1] == "done"


def test_recording_held_open_by_a_writer_after_its_claim_is_put_back_until_closed(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The planner cannot ask the kernel here (as for another user's file without CAP_LEASE) and saw no
    # open (the file was renamed in, its writer still holding it): it claims. The pipeline's own lease
    # probe on its descriptor finds the writer and puts the pair back, again and again until it closes.
    monkeypatch.setattr(planner, "open_for_writing", lambda path: None)
    data, more = wav_bytes(341, 100_000), b"\x00\x01" * 4000
    with captured_log() as log, running(make_settings()):
        put_atomic(spool.inbox / "held.json", sidecar("held"))
        writer = open(spool.inbox / ".held.wav.tmp", "wb")  # noqa: SIM115 - the producer keeps its handle
        writer.write(data)
        writer.flush()
        os.rename(spool.inbox / ".held.wav.tmp", spool.inbox / "held.wav")

        def put_back() -> bool:
            return any(
                line["event"] == "upload.released" and "holds the recording open" in line.get("reason", "")
                for line in log()
            )

        wait_for(put_back, what="the claimed pair put back while its writer holds it")
        writer.write(more)
        writer.close()
        wait_for(lambda: (spool.done / "held.wav").exists(), what="taken once its writer closed it")
    assert_uploaded_once_whole(spool, sim, "held.wav", data + more)


def test_writer_that_reopens_to_append_with_pauses_shorter_than_settle_is_taken_whole(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # Issue 9: open, append, close, 1.5 s pause, again; settle 2 s. Each close is followed by a
    # quiet second in which no one holds the file open: only the settle wait tells it is not done.
    data = wav_bytes(350, 64_000)
    with running(make_settings(watch__settle_seconds=2)):
        put_atomic(spool.inbox / "chunks.json", sidecar("chunks"))
        slow_write(spool.inbox / "chunks.wav", data, chunks=4, pause_s=1.5, reopen=True)
        wait_for(lambda: (spool.done / "chunks.wav").exists(), what="taken once settled")
    assert_uploaded_once_whole(spool, sim, "chunks.wav", data)


# -- held open: a writer that keeps its file open, whatever it writes -----------------------------


@contextmanager
def holding(path: Path, data: bytes) -> Iterator[IO[bytes]]:
    """A writer that writes ``data`` in place and keeps the file open until the block ends."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        yield fh


def looks(log: Callable[[], list[dict[str, Any]]], name: str) -> Callable[[], int]:
    """How many times the planner has looked at ``name`` and found it held open."""
    return lambda: sum(line["event"] == "claim.deferred" and line.get("file") == name for line in log())


@pytest.mark.parametrize("means", ["lease", "events_only"])
def test_writer_holding_its_file_open_without_writing_is_not_taken_until_it_closes(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, means: str
) -> None:
    # The file is unchanged for far longer than settle_seconds while its writer holds it: not complete.
    # events_only: the kernel cannot be asked (another user's file, no CAP_LEASE); inotify's open
    # and write events, with no close-after-write yet, tell the same.
    if means == "events_only":
        monkeypatch.setattr(planner, "open_for_writing", lambda path: None)
    data = wav_bytes(360, 40_000)
    with captured_log() as log, running(make_settings(watch__settle_seconds=0.2)):
        put_atomic(spool.inbox / "idle.json", sidecar("idle"))
        with holding(spool.inbox / "idle.wav", data[:20_000]) as fh:
            held = looks(log, "idle.wav")
            wait_for(lambda: held() >= 3, what="looked at three times while held")
            assert spool.rows() == [] and (spool.inbox / "idle.wav").exists()
            fh.write(data[20_000:])
        wait_for(lambda: (spool.done / "idle.wav").exists(), what="taken once closed")
    assert_uploaded_once_whole(spool, sim, "idle.wav", data)


def test_writer_that_never_closes_is_refused_as_still_open(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(watch__settle_seconds=0.2, watch__pair_timeout_seconds=1)
    with running(settings), holding(spool.inbox / "hung.wav", wav_bytes(361)):
        put_atomic(spool.inbox / "hung.json", sidecar("hung"))
        wait_for(lambda: (spool.failed / "hung.error.json").exists(), what="refused as still open")
    assert '"still_open"' in (spool.failed / "hung.error.json").read_text()
    assert spool.files(spool.failed) == ["hung.error.json", "hung.json", "hung.wav"]
    assert sim.state.received == []


# -- real programs --------------------------------------------------------------------------------

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
RECORDING_S = 10
CODECS = {"wav": "pcm_s16le", "mp3": "libmp3lame"}


def ffmpeg(out: Path, *, realtime: bool) -> list[str]:
    """ffmpeg recording a 440 Hz tone, 8 kHz mono, as a recorder would (``-re``: in real time)."""
    source = f"sine=frequency=440:sample_rate=8000:duration={RECORDING_S}"
    pace = ["-re"] if realtime else []
    codec = CODECS[out.suffix[1:]]
    return [
        FFMPEG,
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        *pace,
        "-f",
        "lavfi",
        "-i",
        source,
        "-ac",
        "1",
        "-c:a",
        codec,
        str(out),
    ]


def reference(tmp_path: Path, name: str) -> bytes:
    """What ffmpeg writes for ``name`` when not paced: the final file a recorder leaves."""
    out = tmp_path / "reference" / name
    out.parent.mkdir(exist_ok=True)
    subprocess.run(ffmpeg(out, realtime=False), check=True, timeout=60)
    return out.read_bytes()


def record(spool: Spool, recordings: dict[str, bool]) -> None:
    """Record each ``NAME.ext`` in real time at once, its sidecar written before (True) or after (False)."""
    for name, first in recordings.items():
        if first:
            put(spool.inbox / f"{name.split('.')[0]}.json", sidecar(name.split(".")[0]))
    procs = {name: subprocess.Popen(ffmpeg(spool.inbox / name, realtime=True)) for name in recordings}
    for name, proc in procs.items():
        assert proc.wait(timeout=RECORDING_S + 60) == 0
        if not recordings[name]:
            put(spool.inbox / f"{name.split('.')[0]}.json", sidecar(name.split(".")[0]))


def assert_delivered_whole(spool: Spool, sim: Simulator, expected: dict[str, bytes]) -> None:
    got = {r.metadata["id"]: (r.sha256, r.size) for r in sim.state.received}
    assert len(sim.state.received) == len(expected)
    assert got == {name.split(".")[0]: (sha(data), len(data)) for name, data in expected.items()}
    for name, data in expected.items():
        assert (spool.done / name).read_bytes() == data
    assert spool.files(spool.failed) == []
    assert {row.state for row in spool.rows()} == {"done"}


def test_ffmpeg_recording_in_real_time_is_delivered_once_whole(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Issue 15: ffmpeg buffers 32 KiB, so its WAV grows every ~2 s and its MP3 stays at 0 bytes until
    # it closes; the settle wait here (0.2 s) is far below both. Only the hold keeps them.
    recordings = {"fw.wav": True, "fm.mp3": True, "lw.wav": False, "lm.mp3": False}
    expected = {name: reference(tmp_path, name) for name in recordings}
    with running(make_settings()):
        record(spool, recordings)
        wait_for(lambda: all((spool.done / n).exists() for n in recordings), what="every recording taken")
    assert_delivered_whole(spool, sim, expected)


def test_polling_without_leases_delivers_a_buffered_recorder_whole_when_settle_exceeds_its_flush_interval(
    spool: Spool,
    sim: Simulator,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An NFS/SMB inbox: polling sees no opens or closes, and the filesystem takes no leases. What is
    # promised then: a recorder whose flushes come more often than settle_seconds (ffmpeg's WAV: every
    # ~2 s) is taken whole; one still at 0 bytes (the MP3, within its first 32 KiB) waits (rule 4).
    # What is not: a writer that stalls longer than settle_seconds with data written may be taken early.
    for module, name in ((planner, "open_for_writing"), (pipeline, "fd_open_for_writing")):
        monkeypatch.setattr(module, name, lambda _: None)
    monkeypatch.setattr(watcher, "lease_reach", lambda _: "none")
    recordings = {"pw.wav": True, "pm.mp3": True}
    expected = {name: reference(tmp_path, name) for name in recordings}
    settings = make_settings(watch__mode="poll", watch__poll_interval_seconds=0.2, watch__settle_seconds=3.5)
    with captured_log() as log, running(settings):
        record(spool, recordings)
        wait_for(lambda: all((spool.done / n).exists() for n in recordings), what="every recording taken")
    assert_delivered_whole(spool, sim, expected)
    [warning] = [line for line in log() if line["event"] == "watch.held_open_undetectable"]
    assert warning["open_close_events"] is False and warning["read_lease"] == "none"


def _cp(src: Path, dst: Path) -> list[str]:
    return ["cp", str(src), str(dst)]


def _rsync(src: Path, dst: Path) -> list[str]:
    return ["rsync", "--bwlimit=4000", str(src), str(dst)]  # a dotfile temp, renamed into place


def _rsync_inplace(src: Path, dst: Path) -> list[str]:
    return ["rsync", "--inplace", "--bwlimit=4000", str(src), str(dst)]  # written in place, paced


@pytest.mark.parametrize("tool", [_cp, _rsync, _rsync_inplace], ids=["cp", "rsync", "rsync_inplace"])
def test_copy_tools_deliver_a_large_file_once_whole(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], tmp_path: Path, tool: Any
) -> None:
    command = tool(tmp_path, tmp_path)
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed (make test installs rsync)")
    data = wav_bytes(370, 12_000_000)
    source = tmp_path / "big.wav"
    source.write_bytes(data)
    with running(make_settings()):
        put_atomic(spool.inbox / "big.json", sidecar("big"))
        subprocess.run(tool(source, spool.inbox / "big.wav"), check=True, timeout=60)
        wait_for(lambda: (spool.done / "big.wav").exists(), what="the copy taken")
    assert_uploaded_once_whole(spool, sim, "big.wav", data)


def test_write_between_the_last_look_and_the_claim_puts_the_pair_back_at_once(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that appends in the instant between the planner's last look and its rename: the claimed
    # copy no longer matches what settled, so it goes straight back to the inbox to settle again.
    data, more = wav_bytes(380, 60_000), b"\x00\x01" * 2000
    real_claim = Folders.claim
    raced: list[Path] = []

    def claim_racing_a_writer(self: Folders, pair: Any, origin: Path | None = None) -> Any:
        claimed = real_claim(self, pair, origin)
        if claimed is not None and not raced:
            raced.append(claimed.audio)
            with open(claimed.audio, "ab") as late:
                late.write(more)
        return claimed

    monkeypatch.setattr(Folders, "claim", claim_racing_a_writer)
    with captured_log() as log, running(make_settings()):
        put_atomic(spool.inbox / "race.json", sidecar("race"))
        put_atomic(spool.inbox / "race.wav", data)
        wait_for(lambda: (spool.done / "race.wav").exists(), what="taken whole on the second claim")
    assert [line["reason"] for line in log() if line["event"] == "claim.returned"] == ["written while it was claimed"]
    assert_uploaded_once_whole(spool, sim, "race.wav", data + more)


def test_file_found_by_the_first_scan_while_its_writer_holds_it_waits_for_the_close(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # The daemon starts during a recording: no open was seen, only the kernel's lease can tell.
    data = wav_bytes(381, 40_000)
    put(spool.inbox / "early.json", sidecar("early"))
    with holding(spool.inbox / "early.wav", data[:20_000]) as fh, captured_log() as log, running(make_settings()):
        held = looks(log, "early.wav")
        wait_for(lambda: held() >= 2, what="looked at twice while held")
        assert spool.rows() == []
        fh.write(data[20_000:])
        fh.close()
        wait_for(lambda: (spool.done / "early.wav").exists(), what="taken once closed")
    assert_uploaded_once_whole(spool, sim, "early.wav", data)
