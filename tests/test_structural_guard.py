"""The second guard: a recording whose own structure says it is incomplete is never claimed early.

On a fake clock, the real planner and pipeline over real folders: an MP3 cut mid-frame that is never
completed waits ``watch.incomplete_timeout_seconds`` and then lands in failed/ as ``truncated`` (or, with
``watch.truncated = "upload"``, is sent with a warning). With real writers and a real daemon: a WAV written in
place whose header declares its final size while the writer pauses past ``settle_seconds`` is uploaded
whole and never early; a streaming WAV with placeholder sizes is taken by the settle rule, and noted.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from conftest import Spool, running, wait_for
from ingest_support import captured_log, put_atomic, sidecar, slow_write, wav_bytes
from support.fakes import EventLog, FakeClock, MemoryUploader, NullRecorder
from test_audio_structure import SHORT, frame_offsets
from test_writers import assert_uploaded_once_whole

from vocwatch.core.journey import OnConflict
from vocwatch.core.model import Accepted
from vocwatch.core.pairing import Rules
from vocwatch.edges.config import DEFAULT_IGNORE, Settings
from vocwatch.edges.folders import Claimed, Folders
from vocwatch.edges.ledger import Ledger
from vocwatch.runtime.pipeline import Pipeline, PipelineOptions, Prepared
from vocwatch.runtime.planner import Planner, ScanOptions
from vocwatch.testing.simulator import Simulator

CUT_AT = frame_offsets(SHORT)[-1]
CUT = SHORT[: CUT_AT + 100]  # the last frame is cut 100 bytes in, and never completed
SETTLE_S, TIMEOUT_S = 2.0, 600.0


class TakenPairs:
    """The planner's side of the pool: what it offers is kept for the test to journey."""

    def __init__(self) -> None:
        self.offered: list[Claimed] = []

    def has_room(self) -> bool:
        return True

    def offer(self, claimed: Claimed) -> bool:
        self.offered.append(claimed)
        return True

    def owns(self, claimed: Claimed) -> bool:
        return False


class Site:
    """The planner and the pipeline of one vocwatch over real folders, on a clock that moves when told."""

    def __init__(self, root: Path, truncated: Literal["fail", "upload"] = "fail") -> None:
        self.root = root
        self.clock = FakeClock()
        self.folders = Folders(
            inbox=root / "inbox",
            work=root / "work" / "host-1",
            done=root / "done",
            failed=root / "failed",
            uploaded=root / "uploaded",
        )
        self.folders.ensure()
        self.inbox.mkdir(parents=True, exist_ok=True)
        assert self.folders.lock()
        self.pool = TakenPairs()
        self.log = EventLog()
        self.ledger = Ledger(root / "ledger.sqlite3", self.clock, holder="host-1")
        self.planner = Planner(
            folders=self.folders,
            ledger=self.ledger,
            pool=self.pool,  # type: ignore[arg-type]
            clock=self.clock,
            options=ScanOptions(
                rules=Rules(SETTLE_S, pair_timeout_s=3600.0),
                ignore=DEFAULT_IGNORE,
                recursive=True,
                rescan_s=60.0,
                incomplete_timeout_s=TIMEOUT_S,
            ),
            log=self.log,
        )
        self.uploader = MemoryUploader()
        self.pipeline = Pipeline(
            folders=self.folders,
            client=self.uploader,
            ledger=self.ledger,
            clock=self.clock,
            options=PipelineOptions(max_bytes=25 << 20, defaults={}, on_conflict=OnConflict.FAIL, truncated=truncated),
            recorder=NullRecorder(),
            log=self.log,
        )

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def look(self, after_s: float) -> list[Claimed]:
        """Time passes, then the planner looks (as its loop does when a deadline falls due)."""
        self.clock.advance(after_s)
        self.planner.step()
        return self.pool.offered

    def journey(self, claimed: Claimed) -> str:
        prepared = self.pipeline.prepare(claimed)
        if not isinstance(prepared, Prepared):
            return prepared
        try:
            outcome = self.pipeline.attempt(prepared)
            return "done" if isinstance(outcome, Accepted) else type(outcome).__name__
        finally:
            self.pipeline.done_with(prepared)

    def close(self) -> None:
        self.ledger.close()
        self.folders.unlock()


def _events(site: Site, name: str) -> list[dict[str, object]]:
    return [fields for event, fields in site.log.events if event == name]


def test_an_mp3_cut_mid_frame_that_is_never_completed_fails_as_truncated_after_the_timeout(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        put_atomic(site.inbox / "cut.mp3", CUT)
        put_atomic(site.inbox / "cut.json", sidecar("cut-1"))
        site.planner.rescan()
        assert site.look(SETTLE_S) == [], "settled, but its last frame runs past the end: not claimed"
        [deferred] = _events(site, "claim.incomplete")
        assert deferred["cut_offset"] == CUT_AT and deferred["present"] == len(CUT)
        for _ in range(5):  # looked at again while it waits, and still not claimed (nor logged again)
            assert site.look(60.0) == []
        assert len(_events(site, "claim.incomplete")) == 1
        assert site.look(TIMEOUT_S - SETTLE_S - 300.0 - 1.0) == [], "one second before the timeout it still waits"
        [claimed] = site.look(1.0)
        assert _events(site, "claim.truncated")
        assert site.journey(claimed) == "failed"
        assert not site.uploader.received, "never sent"
        error = json.loads((tmp_path / "failed" / "cut.error.json").read_text())
        assert error["reason"] == "truncated"
        assert f"cut at byte {CUT_AT}" in error["message"] and f"{len(CUT)} present" in error["message"]
        assert (tmp_path / "failed" / "cut.mp3").read_bytes() == CUT
        [row] = site.ledger.rows()
        assert row.state == "failed" and (row.last_error or "").startswith("truncated: ")
    finally:
        site.close()


def test_a_cut_recording_that_the_writer_completes_meanwhile_is_taken_whole(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        put_atomic(site.inbox / "late.mp3", CUT)
        put_atomic(site.inbox / "late.json", sidecar("late-1"))
        site.planner.rescan()
        assert site.look(SETTLE_S) == []
        with open(site.inbox / "late.mp3", "ab") as fh:  # the writer was only slow
            fh.write(SHORT[len(CUT) :])
        site.planner.rescan()  # sees the change: the settle wait starts again
        [claimed] = site.look(SETTLE_S)
        assert site.journey(claimed) == "done"
        [got] = site.uploader.received
        assert got.size == len(SHORT)
        [row] = site.ledger.rows()
        assert row.structure == "complete" and row.duration_seconds == 1.152
        assert (row.codec, row.sample_rate, row.channels) == ("mp3", 8000, 1)
    finally:
        site.close()


def test_truncated_upload_sends_it_after_the_timeout_with_a_warning(tmp_path: Path) -> None:
    site = Site(tmp_path, truncated="upload")
    try:
        put_atomic(site.inbox / "cut.mp3", CUT)
        put_atomic(site.inbox / "cut.json", sidecar("cut-2"))
        site.planner.rescan()
        assert site.look(SETTLE_S) == [], '"upload" still waits: it may yet be completed'
        [claimed] = site.look(TIMEOUT_S)
        assert site.journey(claimed) == "done"
        [got] = site.uploader.received
        assert got.size == len(CUT)
        [warning] = _events(site, "upload.truncated")
        assert warning["cut_offset"] == CUT_AT
        [row] = site.ledger.rows()
        assert row.state == "done" and (row.structure or "").startswith("truncated: ")
    finally:
        site.close()


def test_a_recording_the_structure_cannot_judge_is_left_to_the_settle_rule(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        put_atomic(site.inbox / "odd.mp3", b"\xff\xfb" + b"not frames" * 30)
        put_atomic(site.inbox / "odd.json", sidecar("odd-1"))
        site.planner.rescan()
        assert len(site.look(SETTLE_S)) == 1
        assert not _events(site, "claim.incomplete")
    finally:
        site.close()


# -- real writers, a real daemon ----------------------------------------------------------

FINAL = wav_bytes(350, 64_000)  # its header states 64,000 bytes from the first byte written


def test_wav_written_in_place_with_its_final_size_declared_is_uploaded_whole_never_early(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # settle_seconds 0.2 and a writer that pauses far longer (until the daemon has looked): the settle rule
    # alone would take the half file; its header says 64,000 bytes are due, so it waits.
    with captured_log() as log, running(make_settings(watch__settle_seconds=0.2)):
        put_atomic(spool.inbox / "inplace.json", sidecar("inplace"))
        # The writer closes between its two writes (it reopens to append): no handle is held open, so only
        # the structure can tell that the file is not whole yet.
        with open(spool.inbox / "inplace.wav", "wb") as writer:
            writer.write(FINAL[:20_000])
        wait_for(lambda: [e for e in log() if e["event"] == "claim.incomplete"], what="the guard to defer it")
        assert not sim.state.received, "never early"
        assert (spool.inbox / "inplace.wav").exists()
        with open(spool.inbox / "inplace.wav", "ab") as writer:
            writer.write(FINAL[20_000:])
        wait_for(lambda: (spool.done / "inplace.wav").exists(), what="the whole recording taken")
    assert_uploaded_once_whole(spool, sim, "inplace.wav", FINAL)
    [row] = spool.rows()
    assert row.structure == "complete" and row.duration_seconds == 3.997


def _streaming(data: bytes) -> bytes:
    """What a streaming recorder writes until it closes: 0xFFFFFFFF in the RIFF and data sizes."""
    out = bytearray(data)
    out[4:8] = out[40:44] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(out)


def test_streaming_wav_with_placeholder_sizes_is_taken_by_the_settle_rule_and_noted(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    data = _streaming(wav_bytes(351, 48_000))
    settings = make_settings(watch__mode="poll", watch__poll_interval_seconds=0.1, watch__settle_seconds=0.6)
    with running(settings):
        put_atomic(spool.inbox / "stream.json", sidecar("stream"))
        slow_write(spool.inbox / "stream.wav", data, chunks=6, pause_s=0.1)
        wait_for(lambda: (spool.done / "stream.wav").exists(), what="taken once settled")
    assert_uploaded_once_whole(spool, sim, "stream.wav", data)
    [row] = spool.rows()
    assert (row.structure or "").startswith("placeholder: ")
    assert row.codec == "pcm" and row.sample_rate == 8000
    assert row.duration_seconds is not None and 2.9 < row.duration_seconds < 3.01, "what is there, not 0xFFFFFFFF"


def test_daemon_fails_a_cut_mp3_as_truncated_and_the_ledger_and_metric_count_the_rest(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    with running(make_settings(watch__incomplete_timeout_seconds=0.5)) as daemon:
        put_atomic(spool.inbox / "cut.mp3", CUT)
        put_atomic(spool.inbox / "cut.json", sidecar("cut"))
        put_atomic(spool.inbox / "whole.mp3", SHORT)
        put_atomic(spool.inbox / "whole.json", sidecar("whole"))
        wait_for(lambda: (spool.failed / "cut.error.json").exists(), what="the cut one failed")
        wait_for(lambda: (spool.done / "whole.mp3").exists(), what="the whole one delivered")
        seconds = daemon.parts.stats.registry.get_sample_value("vocwatch_audio_seconds_total")
    assert [r.metadata["id"] for r in sim.state.received] == ["whole"]
    assert json.loads((spool.failed / "cut.error.json").read_text())["reason"] == "truncated"
    assert seconds == 1.152
    rows = {r.recording_id: r for r in spool.rows()}
    assert rows["whole"].duration_seconds == 1.152 and rows["whole"].state == "done"
    assert rows["cut"].state == "failed" and (rows["cut"].last_error or "").startswith("truncated")
