"""Shared fixtures: a real simulator on a loopback port, real folders, a real daemon thread."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.waits import wait_for  # the suite's one wait; tests import it from here

from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import Settings, load_settings
from vocwatch.edges.ledger import Ledger, Row
from vocwatch.runtime.daemon import Daemon
from vocwatch.testing.samples import write_mp3, write_sidecar, write_wav
from vocwatch.testing.simulator import SimState, Simulator

TENANT = "tenant-test"
# The throwaway PostgreSQL cluster (pg_cluster, pg_url) for the fleet tests.
pytest_plugins = ["support.pg"]


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "test-" + secrets.token_urlsafe(16)
    monkeypatch.setenv("VOCWATCH_API_KEY", key)
    for var in ("CRESCENDO_API_KEY", "CREDENTIALS_DIRECTORY", "VOCWATCH_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(var, raising=False)
    return key


@pytest.fixture
def sim(api_key: str) -> Iterator[Simulator]:
    simulator = Simulator(SimState(api_key=api_key, tenant=TENANT, complete_after_s=0.2, seed=7)).start()
    yield simulator
    simulator.stop()


@dataclass
class Spool:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "spool" / "inbox"

    @property
    def done(self) -> Path:
        return self.root / "spool" / "done"

    @property
    def failed(self) -> Path:
        return self.root / "spool" / "failed"

    @property
    def work(self) -> Path:
        return self.root / "spool" / "work"

    @property
    def ledger_path(self) -> Path:
        return self.root / "state" / "ledger.sqlite3"

    def files(self, folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())

    def rows(self) -> list[Row]:
        if not self.ledger_path.exists():
            return []
        book = Ledger(self.ledger_path, SystemClock())
        try:
            return list(book.iter_all())
        finally:
            book.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path)
    s.inbox.mkdir(parents=True)
    return s


def toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


@pytest.fixture
def make_settings(spool: Spool, sim: Simulator, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for this test's spool and simulator; keyword ``section__key=value`` overrides."""

    def make(**overrides: Any) -> Settings:
        sections: dict[str, dict[str, Any]] = {
            "api": {"base_url": sim.url, "tenant_id": TENANT},
            "folders": {"inbox": spool.inbox, "done": spool.done, "failed": spool.failed},
            "ledger": {"path": spool.ledger_path},
            "upload": {
                "workers": 2,
                "initial_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.5,
                "auth_probe_seconds": 0.3,
                "shutdown_grace_seconds": 5,
            },
            "watch": {"settle_seconds": 0.2, "rescan_seconds": 5},
            "status": {"poll_initial_seconds": 0.2, "poll_max_seconds": 0.5},
        }
        for name, value in overrides.items():
            section, _, key = name.partition("__")
            sections.setdefault(section, {})[key] = value
        lines = []
        for section, keys in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        config = tmp_path / "config.toml"
        config.write_text("\n".join(lines) + "\n")
        return load_settings(config)

    return make


@contextmanager
def running(settings: Settings, **kwargs: Any) -> Iterator[Daemon]:
    """A real daemon on its own thread; stopped (and its exit status checked) on leaving."""
    daemon = Daemon(settings, **kwargs)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon-under-test")
    thread.start()
    try:
        wait_for(lambda: daemon.watcher.healthy() and daemon.planner.scans > 0, what="daemon ready")
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "daemon did not stop within 30 s"
        assert result == [0]


def drop(
    inbox: Path, name: str, recording_id: str | None = None, *, size: int | None = None, **meta: Any
) -> tuple[Path, Path]:
    """Drop a real recording and its sidecar the careful way (temp name, then rename)."""
    audio = inbox / name
    audio.parent.mkdir(parents=True, exist_ok=True)
    tmp = audio.with_name("." + audio.name + ".tmp")
    if audio.suffix.lower() == ".mp3":
        write_mp3(tmp, 1.0, target_bytes=size)
    else:
        write_wav(tmp, 1.0, target_bytes=size)
    side = audio.with_suffix(".json")
    side_tmp = side.with_name("." + side.name + ".tmp")
    write_sidecar(side_tmp, recording_id or audio.stem, **meta)
    os.rename(tmp, audio)
    os.rename(side_tmp, side)
    return audio, side


def start_daemon(config: Path, **popen: Any) -> subprocess.Popen[str]:
    """``vocwatch run`` as a real process (logs on its stdout unless redirected)."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "vocwatch", "run", "--config", str(config)], **options)
