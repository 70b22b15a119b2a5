"""Log lines as journald reads them: a priority prefix only when stderr is the journal, JSON off a terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from vocwatch.edges.logs import configure, is_journal, report

BAD_CONFIG = '[upload]\nworkers = 0\n[watch]\nsettle_seconds = "soon"\n'


@pytest.fixture
def pipe() -> Iterator[tuple[TextIO, TextIO]]:
    """A real pipe (reader, writer), the way systemd hands a service a stream socket for stderr."""
    r, w = os.pipe()
    with os.fdopen(r, "r") as reader, os.fdopen(w, "w") as writer:
        yield reader, writer
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler).__name__ == "_ToStructlog":
            root.removeHandler(handler)


def stream_id(stream: TextIO) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def lines_of(reader: TextIO, writer: TextIO) -> list[str]:
    writer.close()
    return reader.read().splitlines()


def test_is_journal_only_when_journal_stream_names_this_very_descriptor(
    pipe: tuple[TextIO, TextIO], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(writer))
    assert is_journal(writer)
    with (tmp_path / "log.json").open("w") as elsewhere:  # a service whose stderr was redirected to a file
        assert not is_journal(elsewhere)
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not is_journal(writer)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not is_journal(writer)


def test_each_line_to_the_journal_starts_with_its_syslog_priority(
    pipe: tuple[TextIO, TextIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(writer))
    configure("debug", "auto", stream=writer)
    log = structlog.get_logger()
    log.debug("t.debug")
    log.info("t.info", n=1)
    log.warning("t.warning")
    log.error("t.error")
    logging.getLogger("httpx").warning("a library's %s", "warning")
    lines = lines_of(reader, writer)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<4>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["t.debug", "t.info", "t.warning", "t.error", "library.log"]
    assert events[-1]["logger"] == "httpx" and events[-1]["message"] == "a library's warning"


def test_off_the_journal_lines_are_pure_json(pipe: tuple[TextIO, TextIO], monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # the journal is somewhere, but stderr was redirected away
    configure("info", "auto", stream=writer)
    structlog.get_logger().warning("t.warning", file="a.wav")
    [line] = lines_of(reader, writer)
    assert json.loads(line)["event"] == "t.warning"


def test_report_is_one_json_line_off_a_terminal_with_the_prefix_on_the_journal(
    pipe: tuple[TextIO, TextIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = pipe
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    report("config.invalid", "x.toml: upload.workers: too small", human="config error: ...", stream=writer)
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(writer))
    report("config.invalid", "second", stream=writer)
    first, second = lines_of(reader, writer)
    assert json.loads(first) | {"timestamp": ""} == {
        "event": "config.invalid",
        "level": "error",
        "message": "x.toml: upload.workers: too small",
        "timestamp": "",
    }
    assert second.startswith("<3>{") and json.loads(second[3:])["message"] == "second"


def run_with_stderr(args: list[str], stderr_fd: int, env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "vocwatch", *args], stderr=stderr_fd, stdout=subprocess.DEVNULL, env=env, timeout=60
    ).returncode


def test_a_bad_config_is_one_json_line_per_key_off_a_terminal_and_prefixed_on_the_journal(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BAD_CONFIG)
    r, w = os.pipe()
    st = os.fstat(w)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    code = run_with_stderr(["run", "--config", str(config)], w, env)
    os.close(w)
    with os.fdopen(r) as reader:
        lines = reader.read().splitlines()
    assert code == os.EX_CONFIG
    assert len(lines) == 2 and all(line.startswith("<3>{") for line in lines), lines
    events = [json.loads(line[3:]) for line in lines]
    assert {e["event"] for e in events} == {"config.invalid"} and {e["level"] for e in events} == {"error"}
    for key, event in zip(("upload.workers", "watch.settle_seconds"), events, strict=True):
        assert key in event["message"] and str(config) in event["message"], event


def test_a_bad_config_stays_a_human_line_on_a_terminal(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BAD_CONFIG)
    leader, follower = os.openpty()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    code = run_with_stderr(["run", "--config", str(config)], follower, env)
    os.close(follower)
    text = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal's other end is closed, everything has been read
            break
        if not chunk:
            break
        text += chunk
    os.close(leader)
    lines = text.decode().splitlines()
    assert code == os.EX_CONFIG
    assert len(lines) == 2 and all(line.startswith("vocwatch: config error: ") for line in lines), lines


def test_a_crash_off_a_terminal_is_one_json_line_with_its_traceback(tmp_path: Path) -> None:
    script = (
        "from vocwatch.edges.logs import configure\n"
        "configure('info', 'auto')\n"
        "def deep():\n    raise RuntimeError('boom')\n"
        "deep()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    crash = json.loads(line)
    assert crash["event"] == "process.crashed" and crash["level"] == "critical"
    assert "RuntimeError: boom" in crash["exception"] and "deep" in crash["exception"]


@pytest.mark.parametrize(
    ("code", "event", "level", "text"),
    [
        (
            "import threading\ndef deep():\n    raise RuntimeError('boom')\n"
            "t = threading.Thread(target=deep, name='planner')\nt.start()\nt.join()\n",
            "thread.crashed",
            "critical",
            "RuntimeError: boom",
        ),
        ("import warnings\nwarnings.warn('a library is unhappy', UserWarning)\n", "library.log", "warning", "unhappy"),
    ],
    ids=["exception_in_a_thread", "warnings_module"],
)
def test_what_python_itself_prints_is_one_json_line_off_a_terminal_too(
    code: str, event: str, level: str, text: str
) -> None:
    # A daemon thread's crash and a library's warnings.warn went to stderr as plain text: priority info in the
    # journal (invisible to journalctl -p err) and lines the README's jq recipes cannot read.
    script = "from vocwatch.edges.logs import configure\nconfigure('info', 'auto')\n" + code
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "JOURNAL_STREAM")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    logged = json.loads(line)
    assert logged["event"] == event and logged["level"] == level, logged
    assert text in json.dumps(logged), logged


def test_a_list_or_a_mapping_in_an_event_stays_json_and_is_scrubbed_inside(
    pipe: tuple[TextIO, TextIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    # upload.abandoned's uploads were one string of Python repr ("[{'file': ..., <WorkerState.SENDING: ...>}]"),
    # which jq cannot read; a key inside one was not scrubbed as a string of its own.
    from vocwatch.edges.logs import SCRUB
    from vocwatch.runtime.pool import WorkerState

    reader, writer = pipe
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    SCRUB.add("sekrit-key-123")
    configure("info", "json", stream=writer)
    uploads = [{"file": "a.wav", "state": WorkerState.SENDING, "note": "sent with sekrit-key-123"}]
    structlog.get_logger().warning("upload.abandoned", uploads=uploads, sizes=(1, 2))
    [line] = lines_of(reader, writer)
    event = json.loads(line)
    assert event["uploads"] == [{"file": "a.wav", "state": "sending", "note": "sent with [redacted]"}], event
    assert event["sizes"] == [1, 2]
