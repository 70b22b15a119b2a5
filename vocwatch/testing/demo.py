"""``vocwatch demo``: the whole job, offline, in one command, with no key and no network."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import load_settings
from vocwatch.edges.ledger import Ledger
from vocwatch.edges.logs import configure
from vocwatch.runtime.daemon import Daemon
from vocwatch.testing.samples import write_mp3, write_sidecar, write_wav
from vocwatch.testing.simulator import SimState, Simulator

TENANT = "tenant-demo"


def _drop(inbox: Path, rel: str, recording_id: str, *, mp3: bool, seconds: float) -> None:
    """Write like a careful recorder: to dotted temp names, then rename into place."""
    audio = inbox / rel
    audio.parent.mkdir(parents=True, exist_ok=True)
    tmp = audio.with_name("." + audio.name + ".tmp")
    (write_mp3 if mp3 else write_wav)(tmp, seconds)
    side_tmp = audio.with_name("." + audio.stem + ".json.tmp")
    write_sidecar(side_tmp, recording_id, agent="demo-agent", direction="inbound")
    os.rename(tmp, audio)
    os.rename(side_tmp, audio.with_suffix(".json"))


def run_demo(where: Path | None) -> int:
    root = Path(where or tempfile.mkdtemp(prefix="vocwatch-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    sim = Simulator(SimState(api_key=key, tenant=TENANT, complete_after_s=0.5)).start()
    spool = root / "spool"
    config = root / "config.toml"
    config.write_text(
        f'[api]\nbase_url = "{sim.url}"\ntenant_id = "{TENANT}"\napi_key_file = "{root / "api-key"}"\n'
        f'[folders]\ninbox = "{spool / "inbox"}"\ndone = "{spool / "done"}"\nfailed = "{spool / "failed"}"\n'
        f'[ledger]\npath = "{root / "ledger.sqlite3"}"\n'
        "[upload]\nworkers = 2\n[watch]\nsettle_seconds = 0.3\n"
        "[status]\npoll_initial_seconds = 0.5\npoll_max_seconds = 1.0\n"
    )
    (root / "api-key").write_text(key + "\n")
    os.chmod(root / "api-key", 0o600)
    settings = load_settings(config)
    configure("info", "auto")
    inbox = settings.folders.inbox
    print(f"vocwatch demo: simulator at {sim.url}, folders under {root}", file=sys.stderr)
    # Two pairs wait in the inbox before start-up (the scan takes them), the rest arrive while it watches.
    _drop(inbox, "call-0001.wav", "call-0001", mp3=False, seconds=2)
    _drop(inbox, "call-0002.mp3", "call-0002", mp3=True, seconds=3)
    daemon = Daemon(settings)
    runner = threading.Thread(target=daemon.run, name="daemon")
    runner.start()
    _drop(inbox, "2026/11/25/call-0003.wav", "call-0003", mp3=False, seconds=1)
    _drop(inbox, "2026/11/25/call-0004.mp3", "call-0004", mp3=True, seconds=2)
    _drop(inbox, "call-0005.wav", "call 0005 has spaces", mp3=False, seconds=1)  # a bad id: failed/ + reason
    expected = 5
    ledger = Ledger(settings.ledger.path, SystemClock())
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            rows = list(ledger.iter_all())
            settled = [r for r in rows if r.state in ("done", "failed")]
            polled = all(r.job_status in ("completed", "failed") for r in rows if r.job_id) or not settings.status.poll
            if len(settled) >= expected and polled:
                break
            time.sleep(0.1)  # a poll interval while the daemon works, not a wait for a fixed event
    finally:
        daemon.request_stop()
        runner.join(timeout=60)
        sim.stop()
    rows = list(ledger.iter_all())
    ledger.close()
    print(f"\n{'RECORDING':<22} {'STATE':<8} {'JOB':<32} {'JOB STATUS':<11} WHERE", file=sys.stderr)
    for r in rows:
        where_now = os.path.relpath(r.destination, root) if r.destination else "-"
        print(
            f"{r.recording_id:<22} {r.state:<8} {r.job_id or '-':<32} {r.job_status or '-':<11} {where_now}",
            file=sys.stderr,
        )
    done = sum(r.state == "done" for r in rows)
    failed = [r for r in rows if r.state == "failed"]
    print(
        f"\n{done} delivered, {len(failed)} refused with a reason (see {spool / 'failed'}/*.error.json)",
        file=sys.stderr,
    )
    ok = done == expected - 1 and len(failed) == 1 and failed[0].last_error is not None
    if not ok:
        print("vocwatch demo: FAILED: not every recording reached its expected place", file=sys.stderr)
        return 1
    return 0
