"""The package's life in a throwaway Debian 12 chroot: install, setup, upgrade to a rebuilt package, remove, purge.

Its maintainer scripts run for real (dpkg in the chroot); only systemd itself is not running there (no service
is started: that is the container test's). Run by ``make deb-test`` as root; marker ``deb``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TENANT

from vocwatch.testing.simulator import Simulator

pytestmark = pytest.mark.deb
ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "build" / "deb-chroot-base"  # made once by debootstrap, copied for each run


def package(variable: str) -> Path:
    path = os.environ.get(variable)
    assert path and Path(path).is_file(), f"${variable} names no package: run make deb-test (it builds them)"
    return Path(path).resolve()


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assert os.geteuid() == 0, "the chroot test needs root (dpkg and chroot): run make deb-test as root"
    if not (BASE / ".complete").exists():
        debootstrap = shutil.which("debootstrap")
        assert debootstrap, "debootstrap is missing: apt-get install debootstrap"
        shutil.rmtree(BASE, ignore_errors=True)
        subprocess.run(
            [debootstrap, "--variant=minbase", "--include=systemd,python3", "bookworm", str(BASE)],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        (BASE / ".complete").touch()
    # Never copy a tree with a file system mounted in it (a /proc left mounted would be copied whole).
    assert not any((BASE / "proc").iterdir()), f"{BASE}/proc is not empty: umount it first"
    root = tmp_path_factory.mktemp("chroot") / "root"
    subprocess.run(["cp", "-a", "--one-file-system", str(BASE), str(root)], check=True, timeout=600)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
        shutil.rmtree(root)  # 300 MB; only once /proc is unmounted (check=True above stops here otherwise)


def run(root: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), *argv], input=stdin, capture_output=True, text=True, timeout=300, env=_env()
    )


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def dpkg(root: Path, *args: str, deb: Path | None = None) -> str:
    argv = ["dpkg", *args]
    if deb is not None:
        shutil.copy(deb, root / "tmp" / deb.name)
        argv.append(f"/tmp/{deb.name}")
    done = run(root, *argv)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_install_setup_upgrade_remove_purge(chroot: Path, sim: Simulator, api_key: str) -> None:
    old, new = package("VOCWATCH_DEB"), package("VOCWATCH_DEB_NEWER")
    said = dpkg(chroot, "-i", deb=old)
    assert "vocwatch: installed, not started. Next: vocwatch setup" in said
    # The user, then the spool it owns; the config readable by its group only; the service left alone.
    user = run(chroot, "getent", "passwd", "vocwatch").stdout.split(":")
    uid = int(user[2])
    for folder in ("var/spool/vocwatch/inbox", "var/spool/vocwatch/done", "var/lib/vocwatch"):
        assert (chroot / folder).stat().st_uid == uid, folder
    assert stat.S_IMODE((chroot / "var/spool/vocwatch/inbox").stat().st_mode) == 0o2770
    config = chroot / "etc/vocwatch/config.toml"
    st = config.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0 and st.st_gid == uid
    assert run(chroot, "systemctl", "is-enabled", "vocwatch").stdout.strip() == "disabled"
    assert run(chroot, "vocwatch", "--version").stdout.strip().startswith("vocwatch ")

    # vocwatch setup as an operator's automation would run it, against the simulator on the host's loopback.
    done = run(chroot, "vocwatch", "setup", "--tenant", TENANT, "--base-url", sim.url, "--key-file", "-", stdin=api_key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "systemctl enable --now vocwatch" in done.stdout and api_key not in done.stdout + done.stderr
    key = chroot / "etc/vocwatch/api-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and (key.stat().st_uid, key.stat().st_gid) == (0, 0)
    assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == uid  # setup kept both
    # An operator's own edit, and a ledger with a row: an upgrade must keep both.
    with config.open("a") as fh:
        fh.write("# edited by the operator\n")
    edited = config.read_text()
    ledger = chroot / "var/lib/vocwatch/ledger.sqlite3"
    with sqlite3.connect(ledger) as db:
        db.execute("CREATE TABLE kept (row TEXT)")
        db.execute("INSERT INTO kept VALUES ('delivered')")
    ledger_bytes = ledger.read_bytes()

    said = dpkg(chroot, "-i", deb=new)
    assert "installed, not started" not in said  # an upgrade, not a first install
    version = run(chroot, "dpkg-query", "-W", "-f", "${Version}", "vocwatch").stdout
    assert (
        version
        == subprocess.run(["dpkg-deb", "-f", str(new), "Version"], capture_output=True, text=True).stdout.strip()
    )
    assert config.read_text() == edited and key.read_text() == api_key + "\n" and ledger.read_bytes() == ledger_bytes

    dpkg(chroot, "-r", "vocwatch")
    assert not (chroot / "opt/venvs/vocwatch").exists() and not (chroot / "usr/bin/vocwatch").exists()
    assert config.read_text() == edited and key.exists() and ledger.exists()
    assert (chroot / "var/spool/vocwatch/inbox").is_dir()

    # Purge with a delivered recording still in done/: the spool and its ledger stay, and purge says so.
    recording = chroot / "var/spool/vocwatch/done/call-1.mp3"
    recording.write_bytes(b"ID3 a recording")
    said = dpkg(chroot, "-P", "vocwatch")
    assert "vocwatch: kept /var/spool/vocwatch: 1 files" in said
    assert "vocwatch: kept /var/lib/vocwatch (the ledger of those recordings" in said
    assert "vocwatch: removed the API key /etc/vocwatch/api-key" in said
    assert recording.read_bytes() == b"ID3 a recording" and ledger.read_bytes() == ledger_bytes
    assert not (chroot / "etc/vocwatch").exists()
    assert not (chroot / "var/spool/vocwatch/inbox").exists()  # empty folders went


def test_purge_of_an_unused_install_leaves_nothing_but_the_user(chroot: Path) -> None:
    for leftover in ("var/spool/vocwatch", "var/lib/vocwatch"):
        shutil.rmtree(chroot / leftover, ignore_errors=True)
    dpkg(chroot, "-i", deb=package("VOCWATCH_DEB"))
    said = dpkg(chroot, "-P", "vocwatch")
    assert "kept the system user and group vocwatch" in said and "kept /var/spool" not in said
    for gone in ("etc/vocwatch", "var/spool/vocwatch", "var/lib/vocwatch", "opt/venvs/vocwatch"):
        assert not (chroot / gone).exists(), gone
