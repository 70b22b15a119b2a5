"""The command line as an operator uses it: exit codes, messages, export, backfill, secrets."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Spool, drop, running, start_daemon, wait_for
from ingest_support import folder_chain

from vocwatch.edges.clock import SystemClock
from vocwatch.edges.config import load_settings
from vocwatch.edges.ledger import Ledger
from vocwatch.testing.simulator import Simulator

COMMANDS = ["run", "upload", "ledger", "simulate", "demo", "check", "status", "setup"]


def vocwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vocwatch", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_version(command: str) -> None:
    helped = vocwatch(command, "--help")
    assert helped.returncode == 0 and "usage: vocwatch" in helped.stdout
    version = vocwatch(command, "--version") if command != "ledger" else vocwatch("--version")
    assert version.returncode == 0 and version.stdout.startswith("vocwatch ")


def test_bad_config_exits_78_with_one_line_per_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[upload]\nworkers = 0\nworkres = 3\n[watch]\nsettle_seconds = "soon"\n[api]\nbase_url = "ftp:x"\n'
    )
    result = vocwatch("run", "--config", str(config))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    for key in ("upload.workers", "upload.workres: unknown key", "watch.settle_seconds", "api.base_url"):
        assert any(key in line and str(config) in line for line in lines), (key, lines)


def test_missing_config_file_and_missing_key_exit_78(tmp_path: Path, api_key: str) -> None:
    missing = vocwatch("run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78 and "config file not found" in missing.stderr
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[folders]\ninbox = "{tmp_path}/s/inbox"\ndone = "{tmp_path}/s/done"\n'
        f'failed = "{tmp_path}/s/failed"\n[ledger]\npath = "{tmp_path}/l.db"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "VOCWATCH_API_KEY"}
    nokey = vocwatch("run", "--config", str(config), env=env)
    assert nokey.returncode == 78
    assert "VOCWATCH_API_KEY" in nokey.stderr and "CRESCENDO_API_KEY" in nokey.stderr


def test_environment_overrides_every_key_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[upload]\nworkers = 2\n[watch]\nignore = ["*.x"]\n')
    monkeypatch.setenv("VOCWATCH_UPLOAD__WORKERS", "7")
    monkeypatch.setenv("VOCWATCH_WATCH__IGNORE", '["*.y", ".*"]')
    monkeypatch.setenv("VOCWATCH_CONFIG", str(config))
    settings = load_settings()
    assert settings.upload.workers == 7
    assert settings.watch.ignore == ("*.y", ".*")


def test_ledger_export_as_jsonl_and_csv(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    with running(make_settings()):
        drop(spool.inbox, "e1.wav", "exp-1")
        drop(spool.inbox, "e2.mp3", "exp-2")
        wait_for(lambda: len([r for r in spool.rows() if r.state == "done"]) == 2, what="two done")
    config = str(tmp_path / "config.toml")
    jsonl = vocwatch("ledger", "export", "--config", config, "--format", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert {r["recording_id"] for r in rows} == {"exp-1", "exp-2"}
    for row in rows:
        assert {"recording_id", "file", "state", "job_id", "sha256", "attempts", "error"} <= set(row)
        assert row["state"] == "done" and row["job_id"].startswith("job-voc-") and row["error"] is None
    as_csv = vocwatch("ledger", "export", "--config", config, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["job_id"] for r in parsed] == [r["job_id"] for r in rows]


def test_upload_backfills_a_folder_once_and_exit_status_tells_if_all_succeeded(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings()
    backlog = tmp_path / "old-recordings"
    drop(backlog, "2025/a.wav", "old-a")
    drop(backlog, "2025/b.mp3", "old-b")
    (backlog / "2025/c.wav.part").write_bytes(b"still being copied")  # watch.ignore applies here too
    ok = vocwatch("upload", "--config", str(tmp_path / "config.toml"), str(backlog))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (backlog / "2025/c.wav.part").exists()
    assert spool.files(spool.done) == ["2025/a.json", "2025/a.wav", "2025/b.json", "2025/b.mp3"]
    assert sorted(r.metadata["id"] for r in sim.state.received) == ["old-a", "old-b"]
    drop(backlog, "bad.wav", "not valid!")
    bad = vocwatch("upload", "--config", str(tmp_path / "config.toml"), str(backlog / "bad.wav"))
    assert bad.returncode == 1
    assert "bad.error.json" in spool.files(spool.failed)


def test_upload_records_a_lone_recording_it_fails_in_the_ledger(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings()
    backlog = tmp_path / "old-recordings"
    drop(backlog, "a.wav", "old-a")
    (backlog / "a.json").rename(backlog / "lost.json")  # its recording is not there: missing_recording
    config = str(tmp_path / "config.toml")
    done = vocwatch("upload", "--config", config, str(backlog))
    assert done.returncode == 1, done.stderr[-2000:]
    listed = vocwatch("ledger", "list", "--config", config, "--state", "failed")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((r["file"], r["error"].partition(":")[0]) for r in rows) == [
        ("a.wav", "missing_sidecar"),
        ("lost.json", "missing_recording"),
    ], listed.stdout
    assert sorted(spool.files(spool.failed)) == ["a.error.json", "a.wav", "lost.error.json", "lost.json"]


def test_api_key_never_appears_in_any_log_line(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    sim.state.unauthorized_for(3600)
    make_settings(log__level="debug", log__format="json")
    proc = start_daemon(tmp_path / "config.toml")
    try:
        drop(spool.inbox, "s.wav", "secret-test")
        wait_for(lambda: sim.state.requests >= 1, what="a refused upload")
        sim.state.faults.unauthorized_until = 0.0  # the key works again
        wait_for(lambda: any(r.state == "done" for r in spool.rows()), what="upload after the 401 period")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"upload.auth_paused", "upload.accepted"} <= {e["event"] for e in events}
    assert sim.state.api_key not in out


LEDGER_COMMANDS = {"run": ["run"], "upload": ["upload", "{inbox}"], "ledger_list": ["ledger", "list"]}
NOBODY = 65534
# The real CLI's main(), run as uid 65534 once the interpreter and the modules it needs are loaded.
AS_NOBODY = f"""
import os, sys, tomllib
import vocwatch.cli.main, vocwatch.cli.run, vocwatch.cli.upload, vocwatch.cli.ledger, vocwatch.cli.check
try:
    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
except OSError as exc:
    sys.exit(f"cannot become nobody: {{exc}}")
sys.exit(vocwatch.cli.main.main(sys.argv[1:]))
"""


def _spoil(ledger: Path, how: str) -> None:
    if how == "garbage":
        ledger.write_bytes(bytes(range(256)) * 64)
    elif how == "directory":
        ledger.mkdir()
        (ledger / "something").write_text("x")
    else:  # a real, good ledger that this user may not open
        Ledger(ledger, SystemClock()).close()
        ledger.chmod(0o000)


@pytest.fixture
def open_tree() -> Iterator[Path]:
    """A folder outside pytest's (0700) temp root, so a command run as another user can reach it."""
    root = Path(tempfile.mkdtemp(prefix="vocwatch-ledger-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("how", ["garbage", "directory", "unreadable"])
@pytest.mark.parametrize("command", list(LEDGER_COMMANDS))
def test_an_unusable_ledger_exits_78_with_one_line_naming_it_and_no_traceback(
    open_tree: Path, api_key: str, command: str, how: str
) -> None:
    inbox, ledger = open_tree / "spool" / "inbox", open_tree / "state" / "ledger.sqlite3"
    inbox.mkdir(parents=True)
    ledger.parent.mkdir()
    config = open_tree / "config.toml"
    config.write_text(
        f'[folders]\ninbox = "{inbox}"\ndone = "{open_tree}/spool/done"\nfailed = "{open_tree}/spool/failed"\n'
        f'[ledger]\npath = "{ledger}"\n'
    )
    _spoil(ledger, how)
    cli = ["-m", "vocwatch"]
    if how == "unreadable" and os.geteuid() == 0:
        # Root reads any file: the refusal shows only to another user, who owns the rest of the tree. The
        # interpreter may live where that user cannot go (/root/.pyenv), so it drops to the user once started.
        for path in [open_tree, *open_tree.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        cli = ["-c", AS_NOBODY]
    args = [a.format(inbox=inbox) for a in LEDGER_COMMANDS[command]]
    result = subprocess.run(
        [sys.executable, *cli, *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    if cli[0] == "-c":
        assert os.stat(ledger).st_mode & 0o777 == 0 and os.stat(ledger).st_uid == NOBODY  # refused by its mode
    if "cannot become nobody" in result.stderr:
        pytest.skip(f"as root, a permission refusal needs another user, and setuid is refused: {result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == os.EX_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ledger) in lines[0], lines
    fix = {"garbage": "restore it from a backup", "directory": "is a directory", "unreadable": "chmod"}[how]
    assert fix in lines[0]


def test_upload_of_a_folder_holding_a_thousand_deep_chain_takes_its_pairs_without_recursing(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings()
    backlog = tmp_path / "old-recordings"
    drop(backlog, "top.wav", "deep-top")
    with folder_chain(backlog, 1000) as chain:
        drop(chain[9], "tenth.wav", "deep-tenth")
        done = vocwatch("upload", "--config", str(tmp_path / "config.toml"), str(backlog))
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(r.metadata["id"] for r in sim.state.received) == ["deep-tenth", "deep-top"]
