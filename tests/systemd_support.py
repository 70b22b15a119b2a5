"""What the systemd tests share: the booted machine, the package to install, and reading units and the journal.

Used by tests/test_systemd_service.py (marker ``systemd``, run by ``make systemd-test`` as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.nspawn import Machine, until

REPO = Path(__file__).resolve().parent.parent
UNIT = "vocwatch"
PRODUCER = "recorder"
SPOOL = "/var/spool/vocwatch"


def show(m: Machine, *props: str) -> dict[str, str]:
    """``systemctl show`` of the unit as a dict (ActiveState, NRestarts, ...)."""
    out = m.run(["systemctl", "show", UNIT, *[f"--property={p}" for p in props]]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(m: Machine, *args: str) -> str:
    return m.run(["journalctl", "--no-pager", "-u", UNIT, *args]).stdout


def spawn_failure(m: Machine, timeout: float = 30.0) -> str:
    """The line systemd's executor logs when it cannot start the unit's process (it names UNIT= itself).

    ``journalctl -u`` finds it only when journald still sees the short-lived child in the unit's cgroup, so
    this reads the executor's own field, and waits for journald to store the line.
    """

    def logged() -> str:
        out = m.run(
            [
                "journalctl",
                "--no-pager",
                "-o",
                "cat",
                f"UNIT={UNIT}.service",
                "+",
                f"_SYSTEMD_UNIT={UNIT}.service",
                "-n",
                "40",
            ]
        ).stdout
        return out if "Failed to set up credentials" in out else ""

    return until(logged, timeout, "systemd to log why it could not start the unit")


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON value in ``text`` (jq's pretty output spans lines); anything else between them is an error."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return found
        value, at = decoder.raw_decode(text, at)
        found.append(value)


def exposure(m: Machine) -> float:
    out = m.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    found = re.search(r"Overall exposure level for vocwatch\.service: (\d+(?:\.\d+)?)", out)
    assert found, out
    return float(found.group(1))


def wait_state(m: Machine, state: str, timeout: float = 30.0) -> dict[str, str]:
    props = ("ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus", "StatusText", "MainPID")
    return until(lambda: (p := show(m, *props))["ActiveState"] == state and p, timeout, f"{UNIT} to be {state}")


def stays_failed_past_restart_sec(m: Machine) -> dict[str, str]:
    """Watch the failed unit for twice RestartSec after it failed: it must neither restart nor count one."""
    restart_s = int(show(m, "RestartUSec")["RestartUSec"].removesuffix("s") or 0)
    assert restart_s > 0
    failed_at = time.monotonic()
    props: dict[str, str] = {}

    def watched_long_enough() -> bool:
        nonlocal props
        props = show(m, "ActiveState", "NRestarts", "Result", "ExecMainStatus")
        assert props["ActiveState"] == "failed" and props["NRestarts"] == "0", props
        return time.monotonic() - failed_at > 2 * restart_s

    until(watched_long_enough, 4 * restart_s + 30, "twice RestartSec to pass", interval=0.5)
    return props


@dataclass(frozen=True)
class Package:
    """The .deb to install and the version it carries."""

    path: Path
    version: str


def built_package() -> Package:
    """The package ``make systemd-test`` just built ($VOCWATCH_DEB), else the one ``make deb`` builds now."""
    given = os.environ.get("VOCWATCH_DEB")
    if given:
        deb = Path(given)
    else:
        built = subprocess.run(["make", "-C", str(REPO), "deb"], check=True, capture_output=True, text=True)
        [name] = re.findall(r"^built (dist/vocwatch_\S+\.deb)$", built.stdout, re.MULTILINE)
        deb = REPO / name
    assert deb.is_file(), f"no package at {deb}: build it with make deb"
    version = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Package(deb, version)


def bumped(package: Package, into: Path) -> Package:
    """The same package repacked with a higher version (``+rebuild1``), as a rebuilt release would be."""
    tree = Path(tempfile.mkdtemp(dir=into))
    subprocess.run(["dpkg-deb", "-R", str(package.path), str(tree / "pkg")], check=True)
    control = tree / "pkg/DEBIAN/control"
    version = package.version + "+rebuild1"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    out = into / f"vocwatch_{version}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree / "pkg"), str(out)], check=True, capture_output=True
    )
    return Package(out, version)


def install(m: Machine, package: Package) -> subprocess.CompletedProcess[str]:
    """``apt install /root/vocwatch_*.deb`` inside, as the README says (its dependencies are in the image)."""
    inside = f"/root/{package.path.name}"
    m.path(inside).write_bytes(package.path.read_bytes())
    return m.run(
        ["apt-get", "install", "-y", inside],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=300,
    )


def readme_recipes() -> list[tuple[str, str]]:
    """(command, what it says it prints) for every journalctl line of the README's code blocks."""
    recipes, fenced = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.lstrip().startswith("journalctl"):
            command, _, says = line.partition("  # ")
            recipes.append((command.strip(), says.strip()))
    return recipes


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_output_of_follow(m: Machine, command: str, timeout: float = 30.0) -> str:
    """Run a never-ending ``journalctl -f ... | jq`` recipe on a terminal (as an operator does, so jq writes each
    object at once) until it printed one whole JSON object, then stop it; its colours are stripped."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        m.command(["bash", "-o", "pipefail", "-c", command], env={"TERM": "dumb"}),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def one_object() -> str:
        text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")
        try:
            return text if json_objects(text) else ""
        except json.JSONDecodeError:  # an object half printed yet
            return ""

    try:
        return str(until(one_object, timeout, f"{command!r} to print a JSON object"))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        reader.join(30)
        os.close(leader)
