"""A full disk never loses a recording: it stays where it was, the error is logged, and it is retried."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Spool, drop, running, wait_for

from vocwatch.testing.simulator import Simulator


@pytest.fixture
def tiny_spool(spool: Spool) -> Iterator[Spool]:
    """The spool on its own 2 MiB tmpfs, so that it can really fill up."""
    root = spool.root / "spool"
    root.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (root): {mounted.stderr.decode().strip()}")
    spool.inbox.mkdir(parents=True)
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _fill_disk(folder: Path) -> Path:
    filler = folder / ".filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_full_disk_keeps_the_pair_in_work_logs_it_and_retries(
    tiny_spool: Spool, sim: Simulator, make_settings, capsys
) -> None:
    spool = tiny_spool
    drop(spool.inbox, "nospace.wav", "bad id with spaces")  # refused: needs an error file written
    settings = make_settings(watch__rescan_seconds=0.3)
    for folder in (spool.done, spool.failed, spool.work):
        folder.mkdir(parents=True, exist_ok=True)
    filler = _fill_disk(spool.root / "spool")
    with running(settings) as daemon:
        work = daemon.parts.folders.work
        wait_for(lambda: "files.move_failed" in capsys.readouterr().out, what="the logged disk error")
        assert sorted(p.name for p in work.iterdir()) == ["nospace.json", "nospace.wav"]
        assert spool.files(spool.failed) == []
        os.unlink(filler)
        wait_for(lambda: (spool.failed / "nospace.error.json").exists(), what="retry after space was freed")
    assert json.loads((spool.failed / "nospace.error.json").read_text())["reason"] == "invalid_id"
    assert sorted(spool.files(spool.failed)) == ["nospace.error.json", "nospace.json", "nospace.wav"]
