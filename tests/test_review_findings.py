"""The review's findings: each test states the correct behaviour; on the review branch they fail until fixed.

Each one stages its scenario through the real pipeline, folders and ledger (tests/support/world.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest
from pydantic import SecretStr
from support.fakes import Crash, FailAt, MemoryUploader
from support.world import World

from vocwatch.core.model import Pair, Rejected
from vocwatch.core.states import Stage, State
from vocwatch.edges.client import CrescendoClient, JobStatus
from vocwatch.edges.effects import Effect, listening
from vocwatch.edges.logs import SCRUB


def _wav(fill: bytes, n: int = 400) -> bytes:
    return b"RIFF" + n.to_bytes(4, "little") + b"WAVEfmt " + fill * n


WAV = _wav(b"x")
WAV2 = _wav(b"y")
WAV3 = _wav(b"z")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class After:
    """Once an effect whose target ends with ``first`` was announced, do ``action`` before the next
    ``effect`` whose target ends with ``suffix`` (raise a Crash, or let another process act)."""

    first: str
    effect: Effect
    suffix: str
    action: Callable[[], None]
    armed: bool = False
    fired: bool = False

    def before(self, effect: Effect, target: str) -> None:
        if self.fired:
            return
        if not self.armed:
            self.armed = target.endswith(self.first)
            return
        if effect == self.effect and target.endswith(self.suffix):
            self.fired = True
            self.action()


def _die() -> None:
    raise Crash("the process died here")


def _settle(world: World) -> None:
    """A restart: recovery, then every leftover in work/ and every pair in the inbox journeyed once."""
    world.start()
    world.take_everything()


# -- 1. a put-back cut short separates the pair for good ------------------------------------------


def test_a_put_back_cut_short_still_puts_the_pair_back_together(tmp_path: Path) -> None:
    """latest.wav/latest.json are reused by the producer. rec-1's put-back chose latest~1 (the producer's
    rec-2 held the plain names) and died after the recording went back. rec-2 is then taken by another
    vocwatch. At the restart rec-1's lone sidecar must rejoin its own recording (latest~1.*), not go back
    as latest.json, where the producer's next latest.wav pairs with it and rec-1's audio has no sidecar."""
    world = World(tmp_path)
    world.start()
    world.drop("latest.wav", "rec-1", WAV)
    [pair] = world.ready()
    claimed = world.claim(pair)
    assert claimed is not None and world.process is not None
    world.drop("latest.wav", "rec-2", WAV2)  # the producer reuses the names
    with listening(FailAt(Effect.LINK, "inbox/latest~1.json", Crash())), pytest.raises(Crash):
        world.process.folders.release(claimed)  # a shutdown's put-back, cut short
    world.crash()
    assert world.files("inbox") == ["latest.json", "latest.wav", "latest~1.wav"]
    other = World(tmp_path, uploader=world.uploader, holder="host-2")  # takes rec-2 meanwhile
    other.start()
    taken = other.claim(Pair(PurePosixPath("latest.wav"), PurePosixPath("latest.json")))
    assert taken is not None and other.journey(taken) == "accepted"
    other.crash()
    world.start()
    for leftover in world.leftovers():
        world.journey(leftover)
    # rec-1 is whole in the inbox again: its sidecar beside its own recording, under one name.
    pairs = world.ready()
    assert len(pairs) == 1, world.files("inbox")
    [back] = pairs
    assert (tmp_path / "inbox" / back.audio).read_bytes() == WAV
    assert back.sidecar is not None
    assert json.loads((tmp_path / "inbox" / back.sidecar).read_text())["id"] == "rec-1"
    world.crash()


# -- 2. a lone recording left by a cut-short move to done/ (duplicate) or failed/ is misjudged --------


@pytest.mark.parametrize("require_sidecar", [True, False], ids=["sidecar-required", "lone-allowed"])
def test_a_duplicates_move_cut_short_is_finished_not_returned_or_resent(tmp_path: Path, require_sidecar: bool) -> None:
    """copy.wav is rec-a again (a duplicate). Its move to done/ dies after the sidecar went: the lone
    copy.wav in work/ must end in done/ beside its sidecar, with a duplicate row; not go back to the inbox
    alone (then failed/ as missing_sidecar), and never be sent again under its stem as recording id 'copy'."""
    world = World(tmp_path, require_sidecar=require_sidecar)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    first = world.claim(world.ready()[0])
    assert first is not None and world.journey(first) == "accepted"
    world.drop("copy.wav", "rec-a", WAV)
    second = world.claim(world.ready()[0])
    assert second is not None
    with listening(FailAt(Effect.LINK, "done/copy.wav", Crash())), pytest.raises(Crash):
        world.journey(second)
    world.crash()
    assert world.files("work/host-1") == ["copy.wav"] and "copy.json" in world.files("done")
    _settle(world)
    assert len(world.uploader.received) == 1, [r.metadata for r in world.uploader.received]
    assert world.files("inbox") == [] and world.files("work") == []
    assert world.files("done") == ["a.json", "a.wav", "copy.json", "copy.wav"]
    assert sorted(str(r.state) for r in world.rows()) == ["done", "duplicate"]
    world.crash()


@pytest.mark.parametrize("require_sidecar", [True, False], ids=["sidecar-required", "lone-allowed"])
def test_a_rejected_recordings_move_cut_short_ends_in_failed_not_resent(tmp_path: Path, require_sidecar: bool) -> None:
    """Crescendo refused a.wav (400). Its move to failed/ dies after the error file and the sidecar went: the
    lone a.wav must join them in failed/ with a failed row, not go back alone or be sent again as id 'a'."""
    server = MemoryUploader(lambda name: Rejected(400, "bad_audio", "cannot decode"))
    world = World(tmp_path, uploader=server, require_sidecar=require_sidecar)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    with listening(FailAt(Effect.LINK, "failed/a.wav", Crash())), pytest.raises(Crash):
        world.journey(claimed)
    world.crash()
    assert world.files("work/host-1") == ["a.wav"]
    _settle(world)
    assert len(server.received) == 1, [r.metadata for r in server.received]
    assert world.files("inbox") == [] and world.files("work") == []
    assert world.files("failed") == ["a.error.json", "a.json", "a.wav"]
    [row] = world.rows()
    assert row.state == State.FAILED and row.recording_id == "rec-a"
    world.crash()


# -- 3. a terminal outcome whose commit is lost: the files are final, the row never is -------------


def test_a_crash_after_a_rejected_pair_reached_failed_still_ends_its_row_failed(tmp_path: Path) -> None:
    """The pair is in failed/ with its error file; the crash came before the failed row's commit. After the
    restart the row must say failed, not stay 'uploading' (held by nobody, forever)."""
    server = MemoryUploader(lambda name: Rejected(400, "bad_audio", "cannot decode"))
    world = World(tmp_path, uploader=server)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    with listening(After("failed/a.wav", Effect.COMMIT, "ledger.sqlite3", _die)), pytest.raises(Crash):
        world.journey(claimed)
    world.crash()
    assert world.files("failed") == ["a.error.json", "a.json", "a.wav"]
    _settle(world)
    rows = world.rows()
    assert [(r.recording_id, str(r.state)) for r in rows] == [("rec-a", "failed")]
    world.crash()


def test_a_crash_after_a_duplicate_reached_done_still_records_its_row(tmp_path: Path) -> None:
    """The duplicate is in done/; the crash came before its row's commit. Every recording ends with a
    ledger row saying so: after the restart copy.wav has its duplicate row."""
    world = World(tmp_path)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    first = world.claim(world.ready()[0])
    assert first is not None and world.journey(first) == "accepted"
    world.drop("copy.wav", "rec-a", WAV)
    second = world.claim(world.ready()[0])
    assert second is not None
    with listening(After("done/copy.wav", Effect.COMMIT, "ledger.sqlite3", _die)), pytest.raises(Crash):
        world.journey(second)
    world.crash()
    _settle(world)
    assert "copy.wav" in world.files("done")
    states = sorted((r.file, str(r.state)) for r in world.rows())
    assert states == [("a.wav", "done"), ("copy.wav", "duplicate")]
    world.crash()


# -- 4. a dead backfill's accepted row: the daemon's restart marks it done, its files still in work/ -----


def test_a_dead_backfills_accepted_row_is_not_marked_done_while_its_files_are_in_its_work_folder(
    tmp_path: Path,
) -> None:
    """The backfill died between committing the job id and moving the files. The daemon's start-up recovery
    must not mark the row done: its files are in work/host-1-upload/, not in done/."""
    server = MemoryUploader()
    backfill = World(tmp_path, uploader=server, holder="host-1-upload")
    backfill.start()
    backfill.drop("a.wav", "rec-a", WAV)
    claimed = backfill.claim(backfill.ready()[0])
    assert claimed is not None
    with listening(FailAt(Effect.LINK, "done/a.json", Crash())), pytest.raises(Crash):
        backfill.journey(claimed)
    backfill.crash()
    daemon = World(tmp_path, uploader=server, holder="host-1")
    daemon.start()  # recovery
    [row] = daemon.rows()
    assert backfill.files("work/host-1-upload") == ["a.json", "a.wav"]
    assert not (row.state == State.DONE and not Path(row.destination or "").exists()), (row.state, row.destination)
    daemon.crash()


# -- 5. two pollers on one ledger (two daemons, own instances) ---------------------------------------


def test_two_pollers_settling_one_uploaded_row_neither_dies_and_the_row_names_where_the_files_are(
    tmp_path: Path,
) -> None:
    """done_after = "completed", two daemons (own instances, one ledger). Both settle the same completed
    row: one moves the files to done/, the other, finding uploaded/ empty, ends the row first. The first
    must not die of a StaleRowError (it escapes the poller's thread), and the row must name done/a.wav."""
    server = MemoryUploader()
    one = World(tmp_path, uploader=server, holder="host-1", done_stage=Stage.UPLOADED)
    two = World(tmp_path, uploader=server, holder="host-2", done_stage=Stage.UPLOADED)
    one.start()
    two.start()
    one.drop("a.wav", "rec-a", WAV)
    claimed = one.claim(one.ready()[0])
    assert claimed is not None and one.journey(claimed) == "accepted"
    assert one.files("uploaded") == ["a.json", "a.wav"]
    two.clock = one.clock
    race = After("done/a.wav", Effect.COMMIT, "ledger.sqlite3", lambda: two.poll())
    with listening(race):
        one.poll()  # must not raise
    assert race.fired
    assert one.files("done") == ["a.json", "a.wav"]
    [row] = one.rows()
    assert row.state == State.DONE and row.destination == str(tmp_path / "done" / "a.wav"), row
    one.crash()
    two.crash()


# -- 6. a job status outside started/completed/failed strands the pair in uploaded/ ------------------


def test_a_job_reported_with_an_unexpected_status_is_polled_again_until_it_ends(tmp_path: Path) -> None:
    """done_after = "completed". The API says 'processing' once (not one of the three it documents), then
    'completed'. The row must keep being polled, and the pair must reach done/; not wait in uploaded/
    forever because due_polls only asks about jobs that are null or 'started'."""
    world = World(tmp_path, done_stage=Stage.UPLOADED)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None and world.journey(claimed) == "accepted"
    world.poll(JobStatus("job-1", "processing", None, None, {}))
    world.poll(JobStatus("job-1", "completed", 1, None, {}))
    assert world.files("uploaded") == []
    assert world.files("done") == ["a.json", "a.wav"]
    [row] = world.rows()
    assert row.state == State.DONE
    world.crash()


# -- 7. a retried move whose name was taken meanwhile splits the pair -------------------------------


def test_a_retried_move_whose_name_was_taken_meanwhile_keeps_the_pair_together(tmp_path: Path) -> None:
    """The sidecar reached done/a.json, the recording's link hit a full disk. Before the retry another
    done/a.wav appears. The retry must not leave done/a.json (rec-a's metadata) beside that stranger and put
    rec-a's audio at a~1.wav without its sidecar."""
    world = World(tmp_path)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    full = FailAt(Effect.LINK, "done/a.wav", OSError(errno.ENOSPC, "No space left on device"))
    with listening(full), pytest.raises(OSError):
        world.journey(claimed)
    (tmp_path / "done" / "a.wav").write_bytes(WAV3)  # a stranger's a.wav (say, a lone recording's move)
    for leftover in world.leftovers():
        world.journey(leftover)
    [row] = world.rows()
    assert row.state == State.DONE and row.destination is not None
    dest = Path(row.destination)
    assert dest.read_bytes() == WAV
    sidecar = dest.with_name(dest.stem + ".json")
    assert sidecar.exists(), world.files("done")
    assert json.loads(sidecar.read_text())["id"] == "rec-a"
    world.crash()


# -- 8. the API key echoed by a server reaches the error file and the ledger ------------------------

KEY = "sk-live-0123456789abcdef"


def test_the_api_key_echoed_in_a_reply_never_reaches_the_ledger_or_an_error_file(tmp_path: Path) -> None:
    """A gateway echoes the request's Authorization header in its error bodies (502, then 400). The logs
    scrub the key (logs.SCRUB), but the same text must not be written unscrubbed to NAME.error.json or the
    ledger either."""
    replies = iter(
        [
            httpx.Response(502, text=f"upstream error; request headers: Authorization: Bearer {KEY}"),
            httpx.Response(400, json={"code": "bad_header", "message": f"unexpected header: Bearer {KEY}"}),
        ]
    )
    http = httpx.Client(transport=httpx.MockTransport(lambda request: next(replies)))
    SCRUB.add(KEY)  # as daemon.build does for the key it resolves
    client = CrescendoClient(http=http, base_url="https://api.example", tenant_id="t", key=lambda: SecretStr(KEY))
    world = World(tmp_path, uploader=client)  # type: ignore[arg-type]
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    assert world.journey(claimed) == "rejected"
    world.crash()
    error = (tmp_path / "failed" / "a.error.json").read_text()
    assert KEY not in error, error
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    text = " ".join(
        str(v) for table in ("recordings", "events") for row in db.execute(f"SELECT * FROM {table}") for v in row
    )
    db.close()
    assert KEY not in text, text


# -- 9. an OSError inside prepare's ledger decision (a duplicate's or a leftover's move) is "unreadable" --


def test_a_full_disk_while_moving_a_duplicate_leaves_it_for_the_next_rescan_not_failed(tmp_path: Path) -> None:
    """prepare() turns every OSError of _validate into Problem("unreadable"), and _validate includes the
    ledger decision's own moves. A full disk while moving a duplicate to done/ is passing trouble: the pair
    must stay in work/ and end in done/ as a duplicate at the next rescan, not in failed/ as unreadable."""
    world = World(tmp_path)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    first = world.claim(world.ready()[0])
    assert first is not None and world.journey(first) == "accepted"
    world.drop("copy.wav", "rec-a", WAV)
    second = world.claim(world.ready()[0])
    assert second is not None
    full = FailAt(Effect.LINK, "done/copy.json", OSError(errno.ENOSPC, "No space left on device"))
    with listening(full), contextlib.suppress(OSError):  # the pool logs it; the pair stays in work/
        world.journey(second)
    for leftover in world.leftovers():  # the next rescan, with space again
        world.journey(leftover)
    assert world.files("failed") == []
    assert world.files("done") == ["a.json", "a.wav", "copy.json", "copy.wav"]
    assert sorted(str(r.state) for r in world.rows()) == ["done", "duplicate"]
    world.crash()


def test_a_full_disk_while_finishing_a_leftovers_move_does_not_split_it_between_done_and_failed(
    tmp_path: Path,
) -> None:
    """A crash fell after the job id was committed; at the restart the leftover's move (FinishMove, inside
    prepare) meets a full disk after the sidecar went. It must be finished at the next rescan: not have its
    recording sent to failed/ as unreadable, its sidecar in done/, and its accepted row then marked done."""
    world = World(tmp_path)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    with listening(FailAt(Effect.LINK, "done/a.json", Crash())), pytest.raises(Crash):
        world.journey(claimed)
    world.crash()
    world.start()
    [leftover] = world.leftovers()
    full = FailAt(Effect.LINK, "done/a.wav", OSError(errno.ENOSPC, "No space left on device"))
    with listening(full), contextlib.suppress(OSError):
        world.journey(leftover)
    for again in world.leftovers():
        world.journey(again)
    world.crash()
    world.start()  # recovery
    assert world.files("failed") == []
    assert world.files("done") == ["a.json", "a.wav"]
    assert [str(r.state) for r in world.rows()] == ["done"]
    assert len(world.uploader.received) == 1
    world.crash()


# -- 10. a row left accepted by a failed commit after the move: only a restart mends it ---------------


def test_a_lost_commit_after_the_move_to_uploaded_is_mended_by_the_running_poller(tmp_path: Path) -> None:
    """done_after = "completed". The pair reached uploaded/, then the commit of 'uploaded' failed (SQLite:
    disk full). The worker logs it; the daemon runs on. Its poller learns the job completed; the pair must
    then reach done/ without a restart, not wait in uploaded/ with its row 'accepted'."""
    world = World(tmp_path, done_stage=Stage.UPLOADED)
    world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None

    def full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    lost = After("uploaded/a.wav", Effect.COMMIT, "ledger.sqlite3", full)
    with listening(lost), pytest.raises(sqlite3.OperationalError):
        world.journey(claimed)
    assert world.files("uploaded") == ["a.json", "a.wav"]
    world.poll()
    world.poll()
    assert world.files("uploaded") == []
    assert world.files("done") == ["a.json", "a.wav"]
    [row] = world.rows()
    assert row.state == State.DONE
    world.crash()


# -- 11. shutdown: a put-back that fails escapes Pool.cancel and the supervisor ----------------------


def test_a_put_back_refused_at_shutdown_does_not_escape_the_pools_cancel(tmp_path: Path) -> None:
    """SIGTERM with a pair still queued: cancel() puts it back in the inbox. The inbox refuses the link
    (EROFS: a share gone read-only). cancel() must not raise: it runs inside Supervisor.stop, so an
    exception there skips stopping (and joining) every service after it, and the daemon exits with a
    traceback. The pair stays in work/ for the next start."""
    from vocwatch.runtime.gate import Gate
    from vocwatch.runtime.pool import Pool

    world = World(tmp_path)
    process = world.start()
    world.drop("a.wav", "rec-a", WAV)
    claimed = world.claim(world.ready()[0])
    assert claimed is not None
    gate = Gate(world.clock, initial_backoff=1.0, max_backoff=60.0, auth_probe=30.0)
    pool = Pool(process.pipeline, gate, workers=1, capacity=4, clock=world.clock)  # not started: it stays queued
    assert pool.offer(claimed)
    refused = FailAt(Effect.LINK, "inbox/a.wav", OSError(errno.EROFS, "Read-only file system"))
    with listening(refused):
        pool.cancel()  # must not raise
    assert refused.fired
    assert sorted(world.files("work/host-1")) == ["a.json", "a.wav"]
    world.crash()
