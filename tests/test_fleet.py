"""A fleet: several real daemon processes on one share, one PostgreSQL ledger (tests/support/pg.py).

Each test starts real ``vocwatch run`` processes with distinct instance names against the real simulator,
and judges them by what the simulator received, what the shared ledger says and where the files are.
The simulator does not honour Idempotency-Key here: every send it receives counts, so "uploaded once" is
exactly one request per recording.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Spool, drop, start_daemon, wait_for
from support.pg import Cluster

from vocwatch.core.states import FINAL, OPEN, Row, State
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings
from vocwatch.edges.ledger_pg import PgLedger
from vocwatch.testing.simulator import Simulator

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(300)]


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[str]
    log: Path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                found.append(event)
        return found

    def said(self, name: str) -> bool:
        return bool(self.events(name))


class Fleet:
    def __init__(self, tmp_path: Path, make_settings: Callable[..., Settings], url: str) -> None:
        self.tmp = tmp_path
        self.make_settings = make_settings
        self.url = url
        self.daemons: list[Daemon] = []

    def config(self, name: str, **overrides: Any) -> Path:
        self.make_settings(folders__instance=name, ledger__url=self.url, **overrides)
        path = self.tmp / f"config-{name}.toml"
        shutil.copy(self.tmp / "config.toml", path)
        return path

    def start(self, name: str, **overrides: Any) -> Daemon:
        log = self.tmp / f"{name}.log"
        with open(log, "w") as out:
            proc = start_daemon(self.config(name, **overrides), stdout=out, stderr=subprocess.STDOUT)
        daemon = Daemon(name, proc, log)
        self.daemons.append(daemon)
        wait_for(lambda: daemon.said("daemon.ready") or proc.poll() is not None, 60, f"{name} ready")
        assert proc.poll() is None, daemon.log.read_text()
        return daemon

    def rows(self) -> list[Row]:
        book = PgLedger(self.url, SystemClock())
        try:
            return list(book.iter_all())
        finally:
            book.close()

    def stop_all(self) -> None:
        for d in self.daemons:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
                d.proc.terminate()
        for d in self.daemons:
            try:
                d.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


@pytest.fixture
def fleet(tmp_path: Path, make_settings: Callable[..., Settings], pg_url: str, sim: Simulator) -> Iterator[Fleet]:
    sim.state.honour_idempotency = False  # a second send of the same recording is seen as one
    f = Fleet(tmp_path, make_settings, pg_url)
    try:
        yield f
    finally:
        f.stop_all()


def drop_many(spool: Spool, n: int, prefix: str = "rec") -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    for rid in ids:
        drop(spool.inbox, f"{rid}.mp3", rid)
    return ids


def final(fleet: Fleet, n: int) -> list[Row] | None:
    rows = fleet.rows()
    return rows if len(rows) >= n and all(r.state in FINAL for r in rows) else None


def audio(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.mp3")) if folder.exists() else []


def sends(sim: Simulator) -> Counter[str]:
    """How many times each recording id reached the simulator."""
    with sim.state.lock:
        return Counter(str(r.metadata.get("id")) for r in sim.state.received)


def held_by(fleet: Fleet, name: str) -> list[Row]:
    return [r for r in fleet.rows() if r.state in OPEN and r.holder == name]


def test_three_daemons_share_an_inbox_and_upload_each_of_200_once(fleet: Fleet, spool: Spool, sim: Simulator) -> None:
    for name in ("d1", "d2", "d3"):
        fleet.start(name)
    ids = drop_many(spool, 200)
    rows = wait_for(lambda: final(fleet, 200), 240, "200 final rows")
    assert sorted(r.recording_id for r in rows) == ids  # every row in the shared ledger, one per recording
    assert all(r.state == State.DONE for r in rows), Counter(r.state for r in rows)
    assert sends(sim) == Counter(ids)  # each uploaded once, fleet-wide
    assert {r.host for r in rows} <= {"d1", "d2", "d3"}
    assert len(audio(spool.done)) == 200
    assert audio(spool.failed) == [] and spool.files(spool.inbox) == [] and spool.files(spool.work) == []


def test_the_same_recording_in_two_inboxes_is_uploaded_once_and_recorded_once_as_a_duplicate(
    fleet: Fleet, spool: Spool, sim: Simulator, tmp_path: Path
) -> None:
    other = Spool(tmp_path / "b")
    other.inbox.mkdir(parents=True)
    ids = drop_many(spool, 12)
    for name in sorted(os.listdir(spool.inbox)):  # the very same bytes, dropped on the other share
        shutil.copy(spool.inbox / name, other.inbox / ("." + name))
        os.rename(other.inbox / ("." + name), other.inbox / name)
    fleet.start("a1")
    fleet.start("b1", folders__inbox=other.inbox, folders__done=other.done, folders__failed=other.failed)
    rows = wait_for(lambda: final(fleet, 24), 120, "24 final rows")
    assert sends(sim) == Counter(ids)
    for rid in ids:
        states = sorted(r.state for r in rows if r.recording_id == rid)
        assert states == [State.DONE, State.DUPLICATE], (rid, states)
        done = next(r for r in rows if r.recording_id == rid and r.state == State.DONE)
        dup = next(r for r in rows if r.recording_id == rid and r.state == State.DUPLICATE)
        assert dup.duplicate_of == done.job_id
    assert len(audio(spool.done)) == len(audio(other.done)) == 12


def test_a_killed_daemons_claims_are_finished_by_a_peer_after_its_lease(
    fleet: Fleet, spool: Spool, sim: Simulator
) -> None:
    sim.state.faults.error_rate = 1.0  # 503: the first daemon holds its claims, retrying
    d1 = fleet.start("d1", ledger__lease_seconds=3, upload__workers=3)
    ids = drop_many(spool, 8)
    wait_for(lambda: len(held_by(fleet, "d1")) >= 3, 60, "d1 holding claims")
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait()
    assert audio(spool.work / "d1"), "the killed daemon left claimed pairs in its work folder"
    sim.state.faults.error_rate = 0.0
    d2 = fleet.start("d2", ledger__lease_seconds=3)
    rows = wait_for(lambda: final(fleet, 8), 120, "8 final rows")
    assert d2.said("lease.taken_over")
    assert sorted(r.recording_id for r in rows) == ids and all(r.state == State.DONE for r in rows)
    assert all(c == 1 for c in sends(sim).values()) and sorted(sends(sim)) == ids  # none of them twice
    assert spool.files(spool.work) == [] and audio(spool.failed) == []
    assert len(audio(spool.done)) == 8


def test_postgresql_down_for_10_s_mid_run_loses_nothing_fails_nothing_and_resends_nothing(
    fleet: Fleet, spool: Spool, sim: Simulator, pg_cluster: Cluster
) -> None:
    sim.state.faults.latency_s = 0.05
    daemons = [fleet.start("d1"), fleet.start("d2")]
    ids = drop_many(spool, 60)
    wait_for(lambda: sum(r.state == State.DONE for r in fleet.rows()) >= 8, 120, "some uploads done")
    pg_cluster.stop()
    try:
        wait_for(lambda: all(d.said("ledger.unreachable") for d in daemons), 60, "both daemons notice")
        until = time.monotonic() + 10.0
        while time.monotonic() < until:  # for 10 s the database is gone: nothing may go to failed/
            assert audio(spool.failed) == []
            assert all(d.proc.poll() is None for d in daemons)
            wait_for(lambda: True)
    finally:
        pg_cluster.start()
    rows = wait_for(lambda: final(fleet, 60), 180, "60 final rows")
    assert all(d.said("ledger.reachable") for d in daemons)
    assert all(len(d.events("ledger.unreachable")) == 1 for d in daemons)  # said once, not per call
    assert sorted(r.recording_id for r in rows) == ids and all(r.state == State.DONE for r in rows)
    assert audio(spool.failed) == []
    # Nothing sent twice, so nothing sent after its job id was committed.
    assert sends(sim) == Counter(ids)
    with sim.state.lock:
        job_of = {str(r.metadata.get("id")): r.job_id for r in sim.state.received}
    assert all(job_of[r.recording_id] == r.job_id for r in rows)


def test_a_paused_daemon_resumed_after_its_lease_uploads_nothing_its_peer_took_over(
    fleet: Fleet, spool: Spool, sim: Simulator
) -> None:
    sim.state.faults.error_rate = 1.0
    d1 = fleet.start("d1", ledger__lease_seconds=3, upload__workers=3)
    ids = drop_many(spool, 8)
    wait_for(lambda: len(held_by(fleet, "d1")) >= 3, 60, "d1 holding claims")
    d1.proc.send_signal(signal.SIGSTOP)  # partitioned, not dead: it will wake up holding its claims
    # A request d1 had already begun (its row committed 'uploading') may still leave when it wakes: the
    # at-least-once window the README states. Nothing else of what d2 took over may be sent by d1.
    on_the_wire = {r.recording_id for r in fleet.rows() if r.state == State.UPLOADING and r.holder == "d1"}
    d2 = fleet.start("d2", ledger__lease_seconds=3)
    wait_for(lambda: d2.said("lease.taken_over") and not audio(spool.work / "d1"), 60, "d2 takes over")
    sim.state.faults.error_rate = 0.0
    rows = wait_for(lambda: final(fleet, 8), 120, "8 final rows")
    d1.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: d1.said("lease.lost") and d1.said("lease.held"), 60, "d1 notices and holds a new lease")
    wait_for(lambda: not held_by(fleet, "d1"), 30, "d1 lets go")
    assert not d1.events("upload.accepted"), d1.events("upload.accepted")
    repeats = sends(sim) - Counter(ids)
    assert set(sends(sim)) == set(ids) and all(n == 1 for n in repeats.values()), sends(sim)
    assert set(repeats) <= on_the_wire, (repeats, on_the_wire)  # d1 sent nothing it had not begun
    assert sorted(r.recording_id for r in fleet.rows()) == sorted(r.recording_id for r in rows)
    assert all(r.state == State.DONE for r in fleet.rows())
    assert audio(spool.failed) == [] and len(audio(spool.done)) == 8


def test_ledger_migrate_twice_copies_each_row_once(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], pg_url: str, tmp_path: Path
) -> None:
    from conftest import running

    settings = make_settings(folders__instance="old-host")
    with running(settings):
        ids = drop_many(spool, 4)
        wait_for(lambda: len([r for r in spool.rows() if r.state in FINAL]) >= 4, 60, "4 final rows")
    sqlite_rows = spool.rows()
    config = tmp_path / "config.toml"

    def migrate() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "vocwatch", "ledger", "migrate", "--config", str(config), "--to", pg_url],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert "4 rows added" in migrate()
    assert "0 rows added, 4 already there" in migrate()
    book = PgLedger(pg_url, SystemClock())
    try:
        pg_rows = list(book.iter_all())
    finally:
        book.close()

    def key(r: Row) -> tuple[Any, ...]:
        return (r.recording_id, r.sha256, str(r.state), r.job_id, r.duplicate_of, r.destination)

    assert sorted(map(key, pg_rows)) == sorted(map(key, sqlite_rows))
    assert sorted(r.recording_id for r in pg_rows) == ids
    assert {r.host for r in pg_rows} == {"old-host"}
    # The fleet's view: ledger list filtered by host, against the fleet ledger.
    make_settings(folders__instance="new-host", ledger__url=pg_url)
    listed = subprocess.run(
        [sys.executable, "-m", "vocwatch", "ledger", "list", "--config", str(config), "--host", "old-host"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert sorted(json.loads(line)["recording_id"] for line in listed) == ids
    assert all(json.loads(line)["host"] == "old-host" for line in listed)
    none = subprocess.run(
        [sys.executable, "-m", "vocwatch", "ledger", "list", "--config", str(config), "--host", "elsewhere"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert none == ""


def test_check_reports_the_fleet_ledger_not_the_sqlite_file(
    make_settings: Callable[..., Settings], pg_url: str, pg_cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"

    def ledger_line(url: str) -> tuple[int, str]:
        make_settings(ledger__url=url)
        done = subprocess.run(
            [sys.executable, "-m", "vocwatch", "check", "--config", str(config)], capture_output=True, text=True
        )
        [line] = [line for line in done.stdout.splitlines() if line.split()[1:2] == ["ledger"]]
        return done.returncode, line

    status, line = ledger_line(pg_url)
    assert "ok" in line and "reachable" in line and "sqlite3" not in line, line
    status, line = ledger_line(pg_cluster.url("no_such_db"))
    assert status == 1 and "FAIL" in line and "no_such_db" in line and "ledger.url" in line, line
