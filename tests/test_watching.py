"""Watching the inbox: events or polling, rescans, folders, options, and a watcher that heals itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import Spool, drop, running, wait_for
from ingest_support import captured_log, folder_chain, notify_socket, put, put_atomic, wav_bytes, write_settings

from vocwatch.core.reasons import REASONS, Reason
from vocwatch.edges import watcher
from vocwatch.edges.config import Settings
from vocwatch.edges.notify import SdNotifier
from vocwatch.runtime.daemon import Daemon
from vocwatch.testing.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent


def done(spool: Spool, rel: str) -> Callable[[], bool]:
    return lambda: (spool.done / rel).exists()


def test_polling_takes_pairs_and_never_walks_links(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    (spool.inbox / "loop").symlink_to(spool.inbox)  # a link loop
    (spool.inbox / "everything").symlink_to("/")
    with running(make_settings(watch__mode="poll", watch__poll_interval_seconds=0.1)) as daemon:
        assert daemon.watcher.kind == "poll"
        drop(spool.inbox, "2026/11/25/polled.wav", "polled")
        wait_for(done(spool, "2026/11/25/polled.wav"), what="polled pair in done/")
    assert [r.metadata["id"] for r in sim.state.received] == ["polled"]
    assert spool.files(spool.inbox) == ["everything", "loop"]


def test_a_file_no_event_announced_is_taken_by_the_rescan(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # A poller that looks once an hour stands for every lost event: only the rescan can find this pair.
    settings = make_settings(watch__mode="poll", watch__poll_interval_seconds=3600, watch__rescan_seconds=0.5)
    with running(settings):
        drop(spool.inbox, "unannounced.wav", "unannounced")
        wait_for(done(spool, "unannounced.wav"), what="found by a rescan")


def test_folders_created_or_moved_in_after_startup_are_watched_and_keep_their_path(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    staging = spool.root / "staging" / "12"
    drop(staging, "01/moved.wav", "moved")
    with running(make_settings(watch__pair_timeout_seconds=1)):
        (spool.inbox / "2026" / "11" / "27").mkdir(parents=True)
        threading.Event().wait(0.2)  # the producer makes the folder, then writes into it a moment later
        drop(spool.inbox, "2026/11/27/new.wav", "new")
        put(spool.inbox / "2026/11/28/lonely.wav", wav_bytes(228))
        os.rename(spool.root / "staging" / "12", spool.inbox / "2026" / "12")
        wait_for(done(spool, "2026/11/27/new.wav"), what="pair in a new folder")
        wait_for(done(spool, "2026/12/01/moved.wav"), what="pair in a folder moved in")
        wait_for(lambda: (spool.failed / "2026/11/28/lonely.error.json").exists(), what="failure keeps its path")
    assert spool.files(spool.failed) == ["2026/11/28/lonely.error.json", "2026/11/28/lonely.wav"]


def test_subfolders_are_left_alone_when_not_recursive(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    drop(spool.inbox, "early/sub.wav", "early-sub")
    with running(make_settings(watch__recursive=False, watch__rescan_seconds=0.5)) as daemon:
        drop(spool.inbox, "later/sub.wav", "later-sub")
        drop(spool.inbox, "top.wav", "top")
        wait_for(done(spool, "top.wav"), what="top-level pair")
        scans = daemon.planner.scans
        wait_for(lambda: daemon.planner.scans >= scans + 2, what="two more rescans")
    assert [r.metadata["id"] for r in sim.state.received] == ["top"]
    assert spool.files(spool.inbox) == ["early/sub.json", "early/sub.wav", "later/sub.json", "later/sub.wav"]


LONE_TABLE = [
    # name, sidecar (or None), expected metadata (or the reason in failed/)
    ("lone.wav", None, {"id": "lone", "kind": "phonecall", "source": "pbx-7"}),
    ("lone-2.MP3", None, {"id": "lone-2", "kind": "phonecall", "source": "pbx-7"}),
    ("paired.wav", {"id": "paired-1", "kind": "voicemail"}, {"id": "paired-1", "kind": "voicemail", "source": "pbx-7"}),
    ("lone call.wav", None, "invalid_id"),
    ("lone-Zoë.wav", None, "invalid_id"),
]


def test_without_required_sidecars_a_lone_recording_is_named_by_its_stem(
    spool: Spool, sim: Simulator, tmp_path: Path
) -> None:
    settings = write_settings(
        spool,
        sim.url,
        tmp_path / "lone.toml",
        watch__require_sidecar=False,
        metadata__defaults={"kind": "phonecall", "source": "pbx-7", "id": "never-used"},
    )
    with running(settings):
        for i, (name, side, _) in enumerate(LONE_TABLE):
            if side is not None:
                put_atomic(spool.inbox / Path(name).with_suffix(".json"), json.dumps(side).encode())
            audio = wav_bytes(600 + i) if not name.lower().endswith(".mp3") else _mp3(tmp_path, 600 + i)
            put_atomic(spool.inbox / name, audio)
        for name, _, expected in LONE_TABLE:
            stem = Path(name).stem
            where = spool.done / name if isinstance(expected, dict) else spool.failed / f"{stem}.error.json"
            wait_for(where.exists, what=f"{name} settled")
    got = {r.filename: r.metadata for r in sim.state.received}
    for name, _, expected in LONE_TABLE:
        if isinstance(expected, dict):
            assert got[name] == expected, name
        else:
            error = json.loads((spool.failed / f"{Path(name).stem}.error.json").read_text())
            assert error["reason"] == expected, name


def _mp3(folder: Path, freq: float) -> bytes:
    from vocwatch.testing.samples import write_mp3

    return write_mp3(folder / f"{freq}.mp3", 0.25, freq).read_bytes()


# -- a watcher that heals itself --------------------------------------------------------


def _unhealthy(messages: Callable[[], list[str]], why: str) -> Callable[[], int]:
    # The watchdog keeps being fed: a lost inbox is reported, not "fixed" by a restart loop.
    return lambda: sum(m.startswith("WATCHDOG=1\nSTATUS=unhealthy: watcher down") and why in m for m in messages())


@pytest.mark.parametrize("mode", ["auto", "poll"])
def test_deleted_inbox_is_reported_unhealthy_then_watched_again_once_recreated(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], mode: str
) -> None:
    settings = make_settings(watch__mode=mode, watch__poll_interval_seconds=0.1)
    with (
        captured_log() as log,
        notify_socket() as (address, messages),
        closing(SdNotifier(address)) as notifier,
        running(settings, notifier=notifier) as daemon,
    ):
        shutil.rmtree(spool.inbox)
        wait_for(lambda: _unhealthy(messages, "is missing")() >= 2, what="two unhealthy STATUS notices")
        assert not daemon.watcher.healthy()
        spool.inbox.mkdir()
        drop(spool.inbox, "back.wav", "back")
        wait_for(done(spool, "back.wav"), what="pair in the re-created inbox")
        seen = len(messages())
        wait_for(lambda: any(m.startswith("WATCHDOG=1\nSTATUS=ok") for m in messages()[seen:]), what="healthy again")
    events = [line["event"] for line in log()]
    assert events.count("watch.inbox_missing") == 1, "logged once per outage, not every second"
    assert "watch.lost" in events and events.count("watch.started") == 2


def test_inbox_replaced_by_another_folder_is_followed(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    with captured_log() as log, running(make_settings()) as daemon:
        os.rename(spool.inbox, spool.root / "inbox.old")
        spool.inbox.mkdir()
        wait_for(lambda: daemon.watcher.restarts == 1 and daemon.watcher.healthy(), what="watching the new inbox")
        drop(spool.inbox, "new-inbox.wav", "new-inbox")
        wait_for(done(spool, "new-inbox.wav"), what="pair in the new inbox")
    assert any(line["event"] == "watch.lost" and "replaced" in line["problem"] for line in log())


def test_an_observer_that_dies_is_noticed_logged_and_restarted(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    with captured_log() as log, running(make_settings()) as daemon:
        observer = daemon.watcher.observer
        assert observer is not None
        observer.stop()  # the observer thread ends, as when its share drops
        wait_for(lambda: daemon.watcher.restarts == 1 and daemon.watcher.healthy(), what="a new observer")
        assert daemon.watcher.observer is not observer
        drop(spool.inbox, "after.wav", "after")
        wait_for(done(spool, "after.wav"), what="pair after the restart")
    assert any(line["event"] == "watch.lost" for line in log())


def test_the_event_filter_drops_only_events_that_make_no_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two observers on one folder, one without the filter: every file operation vocwatch must hear of
    # (writes, closes, reopens, reads, chmod, renames in and out, folders) gives both the same hints.
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "mode.wav").write_bytes(b"m")  # only its chmod will be heard
    heard: dict[str, set[tuple[str, str, str | None]]] = {"filtered": set(), "all": set()}
    watchers: list[watcher.Watcher] = []
    for name in heard:
        with monkeypatch.context() as m:
            if name == "all":
                m.setattr(watcher, "hinted_event_types", lambda: None)
            w = watcher.Watcher(
                inbox,
                lambda path, event, src, seen=heard[name]: seen.add((path, event, src)),
                mode="inotify",
                recursive=True,
                poll_interval_s=1.0,
            )
            assert w.start()
            watchers.append(w)

    def both_heard(path: Path, event: str, src: Path | None = None) -> None:
        hint = (str(path), event, None if src is None else str(src))
        wait_for(lambda: all(hint in seen for seen in heard.values()), what=f"{event} {path}")

    try:
        (inbox / "a.wav").write_bytes(b"1")  # created, opened, modified (a write), closed
        with open(inbox / "a.wav", "ab") as fh:  # reopened to append
            fh.write(b"2")
        (inbox / "a.wav").read_bytes()  # opened and closed without writing
        os.chmod(inbox / "mode.wav", 0o600)
        (inbox / ".b.wav.tmp").write_bytes(b"b")
        os.rename(inbox / ".b.wav.tmp", inbox / "b.wav")  # rule 2: renamed from an ignored name
        os.rename(inbox / "b.wav", outside / "b.wav")  # as a claim does
        os.mkdir(inbox / "sub")
        both_heard(inbox / "sub", "changed")  # its watch is in place: what follows is seen the same way
        (inbox / "sub" / "c.json").write_text("{}")
        os.rename(inbox / "sub", inbox / "sub2")
        # Watchdog makes up a move for each file of a moved folder, if the file is still there.
        both_heard(inbox / "sub2" / "c.json", "moved", inbox / "sub" / "c.json")
        os.unlink(inbox / "sub2" / "c.json")
        os.rmdir(inbox / "sub2")
        os.unlink(inbox / "a.wav")
        (inbox / "end").write_bytes(b"")
        both_heard(inbox / "end", "closed")
    finally:
        for w in watchers:
            w.stop()
    assert heard["filtered"] == heard["all"]
    assert (str(inbox / "mode.wav"), "changed", None) in heard["all"]
    events = {event for _, event, _ in heard["all"]}
    assert events >= {
        "created",
        "opened",
        "modified",
        "changed",
        "closed",
        "closed_no_write",
        "moved",
        "deleted",
        "folder_gone",
    }


# -- the inotify watch limit, for real, in a user namespace of its own ------------------


def _namespaces_work() -> bool:
    try:
        subprocess.run(
            ["unshare", "-Ur", "sh", "-c", "echo 1 > /proc/sys/user/max_inotify_watches"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture
def limited_daemon(spool: Spool, sim: Simulator, api_key: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Run ``vocwatch run`` with an inotify limit (watches or instances) lowered; returns its log lines."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(limit: str, value: int, notify: str, **overrides: Any) -> Callable[[], list[dict[str, Any]]]:
        config = tmp_path / "limited.toml"
        write_settings(spool, sim.url, config, watch__settle_seconds=0.2, **overrides)
        log_path = tmp_path / "daemon.log"
        script = f'echo {value} > /proc/sys/user/max_inotify_{limit} && exec "$0" -m vocwatch run --config "$1"'
        env = {**os.environ, "NOTIFY_SOCKET": notify}
        with open(log_path, "wb") as log_file:
            procs.append(
                subprocess.Popen(
                    ["unshare", "-Ur", "sh", "-c", script, sys.executable, str(config)],
                    stderr=log_file,
                    stdout=subprocess.DEVNULL,
                    env=env,
                    cwd=ROOT,
                )
            )

        def lines() -> list[dict[str, Any]]:
            text = log_path.read_text(errors="replace")
            return [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]

        wait_for(lambda: any(line["event"] == "daemon.ready" for line in lines()), what="the daemon ready")
        return lines

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user namespaces (unshare -Ur)")


@needs_namespaces
@pytest.mark.parametrize(
    ("limit", "mode"),
    [("watches", "auto"), ("instances", "auto"), ("watches", "inotify")],
    ids=["watches_auto", "instances_auto", "watches_inotify_only"],
)
def test_inotify_limit_is_logged_with_the_fix_and_files_still_flow(
    spool: Spool, limited_daemon: Callable[..., Any], limit: str, mode: str
) -> None:
    with notify_socket() as (address, messages):
        lines = limited_daemon(limit, 0, address, watch__mode=mode, watch__rescan_seconds=0.5)
        [limit] = [line for line in lines() if line["event"] == "watch.inotify_limit"]
        assert "max_user_watches" in limit["fix"] and 'watch.mode = "poll"' in limit["fix"]
        drop(spool.inbox, "limited.wav", "limited")
        wait_for(done(spool, "limited.wav"), what="pair taken despite the limit")
        if mode == "auto":  # falls back to polling and is healthy
            assert any(line["event"] == "watch.started" and line["observer"] == "poll" for line in lines())
            wait_for(lambda: any(m.startswith("WATCHDOG=1\nSTATUS=ok") for m in messages()), what="healthy")
        else:  # only the rescan takes files: unhealthy, and says why
            wait_for(_unhealthy(messages, "limit reached"), what="unhealthy STATUS")


@needs_namespaces
def test_files_in_a_folder_beyond_the_watch_limit_are_taken_by_the_rescan_and_reported(
    spool: Spool, limited_daemon: Callable[..., Any]
) -> None:
    with notify_socket() as (address, _):
        lines = limited_daemon("watches", 1, address, watch__rescan_seconds=3)
        (spool.inbox / "2026").mkdir()  # the one watch allowed is the inbox's: this folder gets none
        threading.Event().wait(0.3)  # the producer writes into the folder a moment after making it
        drop(spool.inbox, "2026/unwatched.wav", "unwatched")
        wait_for(done(spool, "2026/unwatched.wav"), what="pair found by the rescan")
        [warning] = wait_for(lambda: [ln for ln in lines() if ln["event"] == "scan.unannounced_files"], what="warning")
    assert warning["files"] == 2 and "max_user_watches" in warning["fix"]


# -- every reason is explained ----------------------------------------------------------


def test_vocwatch_check_explains_every_reason_a_file_can_fail_with() -> None:
    # Problem.code is a Reason (mypy holds every Problem to it): each one must be explained.
    assert set(REASONS) == set(Reason)
    rows = [line.split("|")[1] for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    tabled = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}
    assert set(Reason) - tabled == set(), "reasons missing from the README's table"
    result = subprocess.run(
        [sys.executable, "-m", "vocwatch", "check", "--reasons"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    explained = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert explained == set(REASONS)


def test_a_thousand_deep_chain_of_folders_lets_the_daemon_start_and_take_a_top_level_pair(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    # watchdog adds its inotify watches with a recursive walk (RecursionError at this depth); so does the poller.
    settings = make_settings(watch__recursive=True, watch__rescan_seconds=0.3, watch__poll_interval_seconds=0.2)
    with folder_chain(spool.inbox, 1000) as chain, captured_log() as log:
        with running(settings) as daemon:
            drop(spool.inbox, "top.wav", "top")
            wait_for(done(spool, "top.wav"), what="top-level pair in done/")
            scans = daemon.planner.scans
            wait_for(lambda: daemon.planner.scans >= scans + 2, what="two more rescans")
            assert daemon.watcher.healthy()
        assert all(folder.is_dir() for folder in chain)
    too_deep = [line for line in log() if line["event"] == "scan.too_deep"]
    assert len(too_deep) == 1, too_deep  # once, not at every rescan or for every folder below
    assert too_deep[0]["folder"] == str(chain[watcher.MAX_DEPTH]) and too_deep[0]["depth"] == watcher.MAX_DEPTH + 1
    assert "fix" in too_deep[0]
    if daemon.watcher.kind == "poll":  # the interpreter's os.walk recursed (before Python 3.12)
        assert any(line["event"] == "watch.events_failed" for line in log())


def test_hints_for_a_five_hundred_deep_chain_scan_each_new_folder_once_and_never_its_whole_subtree(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(make_settings(watch__recursive=True, watch__rescan_seconds=3600))
    planner = daemon.planner
    scanned: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        scanned.append(os.fsdecode(path))
        return real_scandir(path)

    try:
        with folder_chain(spool.inbox, 500) as chain:
            monkeypatch.setattr(os, "scandir", counting_scandir)
            planner.hint(str(chain[0]), "changed")  # the top folder of a tree that is already there
            planner._wait_for_hints(next_scan=float("inf"))
            assert scanned == [str(chain[0])]
            scanned.clear()
            # What watchdog reports for `mkdir` of every level, then again for a new folder's content, and a
            # top-level drop behind them all.
            for folder in chain + chain[1:]:
                planner.hint(str(folder), "changed")
            drop(spool.inbox, "top.wav", "top")
            for name in ("top.wav", "top.json"):
                planner.hint(str(spool.inbox / name), "moved", str(spool.inbox / f".{name}.tmp"))
            planner._wait_for_hints(next_scan=float("inf"))
            assert len(scanned) == len(set(scanned)) <= len(chain)  # one level per folder, each folder once
            assert {"top.wav", "top.json"} <= set(planner._inbox.entries)
    finally:
        daemon.parts.close()


class _ExplodingObserver:
    """An observer whose construction fails as watchdog's can (a RecursionError, or any bug)."""

    error: type[Exception] = RecursionError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise self.error("maximum recursion depth exceeded")


def test_an_observer_that_raises_while_starting_or_healing_falls_back_to_polling_and_never_stops_the_daemon(
    spool: Spool, sim: Simulator, make_settings: Callable[..., Settings]
) -> None:
    import watchdog.observers

    settings = make_settings(watch__poll_interval_seconds=0.1)
    with captured_log() as log, pytest.MonkeyPatch.context() as patch:
        patch.setattr(watchdog.observers, "Observer", _ExplodingObserver)
        with running(settings) as daemon:
            assert daemon.watcher.kind == "poll"
            drop(spool.inbox, "polled.wav", "polled")
            wait_for(done(spool, "polled.wav"), what="pair taken by the fallback poller")
            # Healing fails too (events and polling both raise): the daemon goes on, rescans still take pairs.
            patch.setattr(watcher, "PollingObserverVFS", type("Broken", (_ExplodingObserver,), {"error": KeyError}))
            observer = daemon.watcher.observer
            assert observer is not None
            observer.stop()
            wait_for(lambda: "cannot" in (daemon.watcher.problem or ""), what="watcher down")
            drop(spool.inbox, "rescanned.wav", "rescanned")
            daemon.planner.hint(str(spool.inbox), "rescan")
            wait_for(done(spool, "rescanned.wav"), what="pair taken by a rescan while nothing watches")
            patch.undo()
            wait_for(daemon.watcher.healthy, what="watching again once the observer works")
    events = [line["event"] for line in log()]
    assert "watch.events_failed" in events and "watch.failed" in events
