"""What `vocwatch run` has loaded when it says READY: only what this configuration uses (issue 11).

The real command line in a fresh interpreter, up to READY: sd_notify's READY=1 is caught in the process
(its notifier replaced), which writes down sys.modules, the collector's state and how many certificate
stores were loaded, then stops itself with SIGTERM. A behaviour, not a timing: each module named here is
one that start-up used to load for nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROBE = """
import gc, json, os, signal, ssl, sys
import vocwatch.edges.notify as notify

stores = []  # each certificate store loaded into a TLS context
load = ssl.SSLContext.load_verify_locations

def counted(self, *args, **kwargs):
    stores.append(1)
    return load(self, *args, **kwargs)

ssl.SSLContext.load_verify_locations = counted

class Probe:
    def notify(self, message):
        if message.startswith("READY=1"):
            seen = {"modules": sorted(sys.modules), "gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                    "stores": len(stores)}
            with open(sys.argv[2], "w") as fh:
                json.dump(seen, fh)
            os.kill(os.getpid(), signal.SIGTERM)

notify.from_environment = Probe
from vocwatch.cli.main import main
sys.exit(main(["run", "--config", sys.argv[1]], freeze=True))
"""

# Loaded by nothing a daemon with a SQLite ledger and an empty inbox does before READY.
NEVER_BEFORE_READY = (
    "mutagen",  # only for a recording whose own headers leave its facts open (an MP3)
    "psycopg",  # only for ledger.url = "postgresql://..."
    "vocwatch.edges.ledger_pg",
    "rich",  # structlog's and httpx's optional extras, in a developer's venv only
    "click",
    "pygments",
    "tqdm",  # vocwatch upload's progress bar
    "tomlkit",  # vocwatch setup
    "vocwatch.testing",  # the simulator and the demo
    "vocwatch.cli.check",
    "vocwatch.cli.upload",
    "vocwatch.cli.ledger",
    "vocwatch.cli.setup",
    "vocwatch.cli.status",
)


def _ready(tmp_path: Path, base_url: str) -> dict[str, Any]:
    spool = tmp_path / "spool"
    (spool / "inbox").mkdir(parents=True)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\n'
        f'[folders]\ninbox = "{spool / "inbox"}"\ndone = "{spool / "done"}"\nfailed = "{spool / "failed"}"\n'
        f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n'
        '[status]\npoll = false\n[log]\nformat = "json"\n'
    )
    seen = tmp_path / "seen.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config), str(seen)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"VOCWATCH_API_KEY": "startup-probe-key", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert '"daemon.ready"' in done.stderr
    result: dict[str, Any] = json.loads(seen.read_text())
    return result


def _loaded(modules: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_ready_loads_nothing_this_configuration_does_not_use(tmp_path: Path) -> None:
    seen = _ready(tmp_path, "http://127.0.0.1:9")
    loaded = [name for name in NEVER_BEFORE_READY if _loaded(seen["modules"], name)]
    assert loaded == []
    # What it needs is there: the watcher, the HTTP client, the settings, the ledger.
    assert {"watchdog.observers", "httpx", "pydantic_settings", "sqlite3"} <= set(seen["modules"])


@pytest.mark.parametrize(("base_url", "stores"), [("http://127.0.0.1:9", 0), ("https://127.0.0.1:9", 1)])
def test_a_certificate_store_is_loaded_for_an_https_api_only_and_once(
    tmp_path: Path, base_url: str, stores: int
) -> None:
    assert _ready(tmp_path, base_url)["stores"] == stores


def test_the_collector_is_on_again_at_ready_with_start_up_frozen(tmp_path: Path) -> None:
    seen = _ready(tmp_path, "http://127.0.0.1:9")
    assert seen["gc_enabled"] is True
    assert seen["frozen"] > 0  # what the imports built is out of every later collection's sight
