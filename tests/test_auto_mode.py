"""watch.mode = "auto" on real mounts: statfs on the test's own folders and on a tmpfs where there is one,
mountinfo parsing, and the watcher polling (and saying so once) where the filesystem type calls for it.
The choice over every filesystem type number is the table in tests/test_schedule.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import EventLog

from vocwatch.core import filesystems
from vocwatch.edges import watcher as watcher_module
from vocwatch.edges.mounts import fs_type, mounts_below
from vocwatch.edges.watcher import Watcher, choose_mode

TMPFS = 0x01021994
NFS = 0x6969


def test_statfs_reads_the_type_of_a_real_folder(tmp_path: Path) -> None:
    kind = fs_type(tmp_path)
    assert kind is not None and kind > 0
    assert fs_type(tmp_path / "missing") is None


def test_a_tmpfs_mount_is_local_and_keeps_inotify(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or fs_type(shm) != TMPFS:
        pytest.skip("no tmpfs at /dev/shm on this machine")
    assert choose_mode("auto", shm, recursive=True).mode == "inotify"
    assert "tmpfs" in choose_mode("auto", shm, recursive=False).show()


def test_mounts_below_the_inbox_come_from_mountinfo(tmp_path: Path) -> None:
    inbox = tmp_path / "in box"
    inbox.mkdir()
    info = tmp_path / "mountinfo"
    escaped = str(inbox).replace(" ", "\\040")
    info.write_text(
        f"22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
        f"30 22 0:40 / {escaped} rw - ext4 /dev/sdb1 rw\n"
        f"31 30 0:41 / {escaped}/site\\040b rw - nfs4 srv:/x rw\n"
        f"32 22 0:42 / {tmp_path}/elsewhere rw - nfs4 srv:/y rw\n"
    )
    assert mounts_below(inbox, str(info)) == [f"{inbox}/site b"]


def test_auto_polls_a_remote_inbox_and_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_module, "fs_type", lambda path: NFS)
    hints: list[tuple[str, str, str | None]] = []
    log = EventLog()
    watch = Watcher(tmp_path, lambda *h: hints.append(h), mode="auto", recursive=True, poll_interval_s=0.1, log=log)
    try:
        assert watch.start()
        assert watch.kind == "poll" and watch.choice.mode == "poll"
        assert watch.choice.polled[0][0] == str(tmp_path)
        watch.stop()
        assert watch.start()  # a restart (heal) does not say it again
    finally:
        watch.stop()
    polling = [fields for event, fields in log.events if event == "watch.polling"]
    assert len(polling) == 1 and polling[0]["paths"] == [str(tmp_path)]
    assert "NFS" in str(polling[0]["why"])


def test_auto_keeps_events_on_a_local_inbox(tmp_path: Path) -> None:
    log = EventLog()
    watch = Watcher(tmp_path, lambda *h: None, mode="auto", recursive=True, poll_interval_s=0.1, log=log)
    try:
        assert watch.start()
        kind = fs_type(tmp_path)
        expected = "poll" if kind in filesystems.REMOTE else "events"
        assert watch.kind == expected
    finally:
        watch.stop()
