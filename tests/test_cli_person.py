"""The command line as a person meets it: pipes, wrong values, help, a missing job, the bar, the sources."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from conftest import Spool, drop, running, wait_for

from vocwatch.cli.main import _parser
from vocwatch.core.states import State
from vocwatch.testing.simulator import Simulator


def vocwatch(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    options: dict[str, object] = {"capture_output": True, "text": True, "timeout": 60, **kwargs}
    return subprocess.run([sys.executable, "-m", "vocwatch", *args], **options)  # type: ignore[call-overload]


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([], name, help=helps.get(name))
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):  # argparse's own -h says what it does
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def test_every_command_and_option_says_what_it_does() -> None:
    walked = list(_actions(_parser(), "vocwatch"))
    assert len(walked) > 40  # every subparser was walked, not just the top
    missing = [where for where, action in walked if not (action.help or "").strip()]
    assert missing == []
    # argparse's stock text for --version is not ours: it should say what *this* version action prints.
    defaulted = [where for where, action in walked if action.help == "show program's version number and exit"]
    assert defaulted == []


def test_an_unknown_state_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    result = vocwatch("ledger", "list", "--state", "sent", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == os.EX_USAGE and result.stdout == ""
    assert "invalid choice: 'sent'" in result.stderr
    for state in State:
        assert f"'{state}'" in result.stderr


def test_a_usage_error_off_a_terminal_exits_64_in_one_json_line() -> None:
    # A typo in a drop-in's ExecStart: argparse's 2 is not in RestartPreventExitStatus, so systemd restarted
    # it every 5 s forever, with a plain usage text at priority info; 64 (EX_USAGE) is, and the line says why.
    result = vocwatch("run", "--confg", "/etc/vocwatch/config.toml")
    assert result.returncode == os.EX_USAGE, result.stderr
    [line] = result.stderr.splitlines()
    error = json.loads(line)
    assert error["event"] == "usage.invalid" and error["level"] == "error", error
    assert "unrecognized arguments: --confg" in error["message"] and "--help" in error["message"]


@pytest.fixture
def delivered(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> tuple[str, str]:
    """Two recordings delivered by a real daemon: (config path, one job id)."""
    with running(make_settings()):
        drop(spool.inbox, "p1.wav", "pipe-1")
        drop(spool.inbox, "p2.mp3", "pipe-2")
        wait_for(lambda: len([r for r in spool.rows() if r.state == "done"]) == 2, what="two done")
    job = next(r.job_id for r in spool.rows() if r.job_id)
    assert job is not None
    return str(tmp_path / "config.toml"), job


def test_every_printing_command_ends_quietly_when_its_reader_goes_away(delivered: tuple[str, str]) -> None:
    config, job = delivered
    commands = [
        ["--help"],  # argparse itself drops a failed write of help: quiet, with its status 0
        ["ledger", "--help"],
        ["ledger", "list", "--config", config],
        ["ledger", "list", "--json", "--state", "done", "--config", config],
        ["ledger", "export", "--format", "csv", "--config", config],
        ["ledger", "report", "--config", config],
        ["ledger", "show", "pipe-1", "--config", config],
        ["status", job, "--config", config],
        ["check", "--reasons", "--config", config],
    ]
    for args in commands:
        read_end, write_end = os.pipe()
        os.close(read_end)  # `| head` that has already read its lines and gone
        try:
            result = vocwatch(*args, stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
        finally:
            os.close(write_end)
        assert result.stderr == "", args
        assert result.returncode == (0 if "--help" in args else 128 + signal.SIGPIPE), args


def test_status_of_an_unknown_job_says_not_found_and_exits_66(delivered: tuple[str, str]) -> None:
    config, job = delivered
    result = vocwatch("status", "job-voc-nope", "--config", config)
    assert result.returncode == os.EX_NOINPUT, result.stderr
    assert "job job-voc-nope not found" in result.stderr and "Traceback" not in result.stderr
    known = vocwatch("status", job, "--config", config)
    assert known.returncode == 0 and json.loads(known.stdout)["id"] == job


def test_status_without_a_key_is_a_config_error_not_a_refused_key(delivered: tuple[str, str]) -> None:
    # No key was sent, so no API refused one: it said "the API refused the key (HTTP 0 ...)" and exited 77.
    config, job = delivered
    env = {k: v for k, v in os.environ.items() if k not in ("VOCWATCH_API_KEY", "CRESCENDO_API_KEY")}
    result = vocwatch("status", job, "--config", config, env=env)
    assert result.returncode == os.EX_CONFIG, result.stderr
    [line] = result.stderr.splitlines()
    problem = json.loads(line)
    assert problem["event"] == "config.invalid" and "api key: none found; looked in" in problem["message"]
    assert "refused" not in result.stderr


def test_status_with_the_api_unreachable_says_so_and_exits_69(delivered: tuple[str, str], tmp_path: Path) -> None:
    # It printed the outcome's Python repr ("Retry(reason=..., after=None)").
    config, job = delivered
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the probe is closed
    text = Path(config).read_text()
    url = re.search(r'base_url = "([^"]+)"', text)
    assert url is not None, text
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(text.replace(url.group(1), f"http://127.0.0.1:{closed}"))
    result = vocwatch("status", job, "--config", str(elsewhere))
    assert result.returncode == os.EX_UNAVAILABLE, result.stderr
    assert f"job {job}: the API could not answer" in result.stderr and "Retry(" not in result.stderr
    assert "try again later" in result.stderr


def _run_on_a_terminal(args: list[str], timeout: float = 90) -> tuple[int, str]:
    """Run vocwatch with stdin, stdout and stderr on a pseudo-terminal: its exit status and everything shown."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-m", "vocwatch", *args])
    # A person's terminal has a size; a new pseudo-terminal's is 0 x 0, where tqdm draws nothing.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal (it exited)
            break
        if not chunk:
            break
        shown += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_log_lines_never_tear_the_progress_bar_of_upload(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings(log__level="debug")
    backlog = tmp_path / "backlog"
    for i in range(6):
        drop(backlog, f"bar-{i}.wav", f"bar-{i}")
    status, shown = _run_on_a_terminal(["upload", "--config", str(tmp_path / "config.toml"), str(backlog)])
    assert status == 0, shown[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)  # colours and cursor moves
    assert "uploading:" in plain and "upload.accepted" in plain  # both a bar and log lines were drawn
    # What a person sees on each line is what follows its last carriage return: never a bar and a log event.
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in plain.split("\n")]  # the pty adds a \r to \n
    torn = [line for line in lines if "uploading:" in line and re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", line)]
    assert torn == []
    assert sum("upload.accepted" in line for line in lines) == 6


def test_upload_moves_its_sources_into_done(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    make_settings()
    backlog = tmp_path / "moved"
    drop(backlog, "m.wav", "moved-1")
    result = vocwatch("upload", "--config", str(tmp_path / "config.toml"), str(backlog))
    assert result.returncode == 0, result.stderr[-2000:]
    assert spool.files(backlog) == [] and spool.files(spool.done) == ["m.json", "m.wav"]
    assert "moves into done/" in vocwatch("upload", "--help").stdout.replace("\n", " ").replace("  ", " ")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _keep_sources(backlog: Path, spool: Spool, sim: Simulator, config: Path) -> dict[str, tuple[bytes, int, int]]:
    drop(backlog, "2025/k1.wav", "keep-1")
    drop(backlog, "2025/k2.mp3", "keep-2")
    (backlog / "2025/lonely.wav").write_bytes((backlog / "2025/k1.wav").read_bytes())  # no sidecar: failed/
    before = _snapshot(backlog)
    result = vocwatch("upload", "--keep-sources", "--config", str(config), str(backlog))
    assert result.returncode == 1, result.stderr[-2000:]  # the lonely recording could not be sent
    assert _snapshot(backlog) == before  # names, bytes, mtimes and inodes: untouched
    assert spool.files(spool.done) == ["2025/k1.json", "2025/k1.wav", "2025/k2.json", "2025/k2.mp3"]
    assert "2025/lonely.wav" in spool.files(spool.failed)
    assert sorted(r.metadata["id"] for r in sim.state.received) == ["keep-1", "keep-2"]
    assert not any(p.is_file() for p in (spool.work).rglob("*"))  # no staged copy is left behind
    return before


def test_keep_sources_leaves_them_and_hard_links_on_one_file_system(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path
) -> None:
    make_settings()
    backlog = tmp_path / "kept"
    before = _keep_sources(backlog, spool, sim, tmp_path / "config.toml")
    done = spool.done / "2025/k1.wav"
    assert done.stat().st_ino == before["2025/k1.wav"][2]  # the same file, linked, not copied


def test_keep_sources_copies_across_file_systems(spool: Spool, sim: Simulator, make_settings, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system: /dev/shm (tmpfs) is missing or on the same one as the spool")
    make_settings()
    with tempfile.TemporaryDirectory(dir=shm) as other:
        backlog = Path(other) / "kept"
        before = _keep_sources(backlog, spool, sim, tmp_path / "config.toml")
        done = spool.done / "2025/k1.wav"
        assert done.read_bytes() == before["2025/k1.wav"][0]
        assert done.stat().st_dev != backlog.stat().st_dev


def test_keep_sources_with_a_source_deleted_midway_sends_the_rest_and_names_it(
    spool: Spool, sim: Simulator, make_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its producer deletes a.wav after vocwatch listed the folder, before it was linked: that was a traceback.
    from vocwatch.cli import upload
    from vocwatch.cli.main import main
    from vocwatch.edges.config import Settings

    make_settings()
    backlog = tmp_path / "kept"
    drop(backlog, "a.wav", "gone-a")
    drop(backlog, "b.wav", "kept-b")
    listed = upload._batches

    def then_deleted(
        paths: list[Path], settings: Settings
    ) -> Iterator[tuple[Path, list[upload.Pair], list[upload.Expired]]]:
        batches = list(listed(paths, settings))
        (backlog / "a.wav").unlink()
        yield from batches

    monkeypatch.setattr(upload, "_batches", then_deleted)
    err = tmp_path / "stderr"
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() sets its own off a terminal: restored after
    with err.open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        try:
            code = main(
                ["upload", "--keep-sources", "--no-progress", "--config", str(tmp_path / "config.toml"), str(backlog)]
            )
        finally:  # main() pointed the logs at this file: undo that before it closes, for the tests that follow
            structlog.reset_defaults()
            logging.captureWarnings(False)
            root = logging.getLogger()
            for handler in [h for h in root.handlers if type(h).__name__ == "_ToStructlog"]:
                root.removeHandler(handler)
    said = err.read_text()
    assert code == 1 and "Traceback" not in said, said
    assert f"{backlog / 'a.wav'}: gone before it could be sent" in said, said
    assert [r.metadata["id"] for r in sim.state.received] == ["kept-b"]
    assert sorted(p.name for p in backlog.iterdir()) == ["a.json", "b.json", "b.wav"]  # the sources, as they were
    assert spool.files(spool.done) == ["b.json", "b.wav"] and spool.files(spool.failed) == []
