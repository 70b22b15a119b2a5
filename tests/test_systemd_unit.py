"""The systemd unit, sysusers and tmpfiles files: systemd's own tools judge them, and they agree with the config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from vocwatch.edges.config import EX_CONFIG, UploadSettings, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = DEPLOY / "vocwatch.service"
EXEC = "/opt/venvs/vocwatch/bin/vocwatch"  # the Debian package's venv (make deb)
ANALYZE = shutil.which("systemd-analyze") or ""
needs_analyze = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze is not installed (not a systemd host)")


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each setting, in order; unit files repeat keys, so no dict."""
    section, out = "", []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((section, key, value))
    return out


def values(key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == "Service" and k == key]


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify refuses a unit whose ExecStart binary is missing, and /opt/vocwatch is not installed here;
    # --root would need a whole systemd tree (sysinit.target...) under it. So: a copy of the unit whose only
    # change is ExecStart's program path, pointing at an executable in tmp_path.
    text = UNIT.read_text()
    assert text.count(EXEC) == 1
    program = tmp_path / "vocwatch"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    copy = tmp_path / "vocwatch.service"
    copy.write_text(text.replace(EXEC, str(program)))
    # --man=no: Documentation=man:vocwatch(1) is installed by the package, not here (tests/test_docs.py builds it).
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even on "Failed to parse ..., ignoring" lines: any word about our unit is a failure.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "vocwatch" in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


@needs_analyze
def test_unit_exposure_score_is_at_most_1_5() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for vocwatch\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.5, result.stdout


def test_every_hardening_line_says_when_to_relax_it() -> None:
    lines = UNIT.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# -- Hardening"))
    end = lines.index("[Install]")
    bare = [
        line
        for i, line in enumerate(lines[start:end], start)
        if line and not line.startswith("#") and not lines[i - 1].startswith("#")
    ]
    assert bare == []


def test_unit_agrees_with_the_shipped_config_and_the_daemon() -> None:
    settings = load_settings(DEPLOY / "config.toml")
    [rw] = values("ReadWritePaths")  # one mount: a rename between two ReadWritePaths mounts fails with EXDEV
    f = settings.folders
    for folder in (f.inbox, f.work_root, f.done, f.failed, f.uploaded_root):
        assert PurePosixPath(rw) in PurePosixPath(folder).parents, folder
    [state] = values("StateDirectory")
    assert settings.ledger.path.parent == Path("/var/lib") / state
    [exec_start] = values("ExecStart")
    assert exec_start.split() == [EXEC, "run", "--config", "/etc/vocwatch/config.toml"]
    assert values("Type") == ["notify"] and values("Restart") == ["on-failure"]
    # Neither a bad config (78) nor a missing key file (243, systemd's EXIT_CREDENTIALS) is a restart's to fix.
    assert {str(EX_CONFIG), "243"} <= set(values("RestartPreventExitStatus")[0].split())
    assert values("SyslogIdentifier") == ["vocwatch"]  # the README's journalctl recipes filter on it
    assert values("LoadCredential") == ["api-key:/etc/vocwatch/api-key"]
    [stop] = values("TimeoutStopSec")
    grace = max(settings.upload.shutdown_grace_seconds, UploadSettings().shutdown_grace_seconds)
    assert int(stop.removesuffix("s")) > grace + 10  # the daemon's own EXTEND_TIMEOUT_USEC is grace + 10 s
    assert values("User") == ["vocwatch"]
    # One capability, CAP_LEASE (the read-lease probe on producers' files, pairing.py rule 3); it reaches
    # other users' files only outside a user namespace of the unit's own.
    assert values("CapabilityBoundingSet") == ["CAP_LEASE"] and values("AmbientCapabilities") == ["CAP_LEASE"]
    assert values("PrivateUsers") == ["no"]
    # A spool or ledger on a file system of its own is mounted first: a late mount is not a config error (78).
    [mounts] = [v for s, k, v in directives(UNIT.read_text()) if s == "Unit" and k == "RequiresMountsFor"]
    assert {PurePosixPath(rw), settings.ledger.path.parent} <= {PurePosixPath(m) for m in mounts.split()}


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers or systemd-tmpfiles is not installed")  # fmt: skip
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles must run as root to chown the folders")
def test_sysusers_and_tmpfiles_make_the_user_and_every_configured_folder(tmp_path: Path) -> None:
    for kind in ("sysusers", "tmpfiles"):
        (tmp_path / "usr/lib" / f"{kind}.d").mkdir(parents=True)
        shutil.copy(DEPLOY / f"vocwatch.{kind}.conf", tmp_path / "usr/lib" / f"{kind}.d" / "vocwatch.conf")
    (tmp_path / "etc").mkdir()
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        args = [tool, f"--root={tmp_path}"] + (["--create"] if tool == "systemd-tmpfiles" else [])
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        # Both exit 0 after "ignoring" a bad line; only silence means every line was taken.
        assert result.returncode == 0 and "vocwatch.conf" not in result.stderr, result.stderr
    [user] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines() if line[:9] == "vocwatch:"]
    uid, gid = int(user[2]), int(user[3])
    settings = load_settings(DEPLOY / "config.toml")
    f = settings.folders
    for folder in (f.inbox, f.work_root, f.done, f.failed, f.uploaded_root, settings.ledger.path.parent):
        st = (tmp_path / folder.relative_to("/")).stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), folder
        assert st.st_mode & 0o007 == 0, f"{folder} is open to all users"
    assert (tmp_path / f.inbox.relative_to("/")).stat().st_mode & 0o2070 == 0o2070  # producers in group vocwatch


def test_a_usage_error_is_not_restarted_either() -> None:
    # A typo in a drop-in's ExecStart exits 64 (EX_USAGE) every time: no restart can fix it.
    assert str(os.EX_USAGE) in values("RestartPreventExitStatus")[0].split()
