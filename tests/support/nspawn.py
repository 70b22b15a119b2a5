"""A throwaway Debian 12 booted by systemd-nspawn, driven from the host by nsenter into its PID 1's namespaces.

Each :class:`Machine` boots a fresh copy of the cached root (tests/support/rootfs.py) and is powered off and
deleted on exit, whatever happened. Every wait has a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from support.waits import wait_for

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MachineError(RuntimeError):
    """The container could not be booted or driven; the message says why (never a silent skip)."""


def until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; raise after ``timeout`` seconds."""
    return wait_for(condition, timeout, what, interval)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Machine:
    """A booted container: :meth:`run` a command inside, read and write its files through :attr:`root`."""

    def __init__(self, image: Path, name: str = "vocwatch-test") -> None:
        self.image = image
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix="vocwatch-nspawn-", dir=os.environ.get("VOCWATCH_NSPAWN_DIR")))
        self.root = self.workdir / "root"
        self.console = self.workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # -- life --------------------------------------------------------------------------------------------
    def boot(self, timeout: float = 90.0) -> None:
        # --reflink=auto: a copy-on-write clone where the file system can, a plain copy elsewhere (~1 s).
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.image), str(self.root)], check=True)
        with self.console.open("wb") as console:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--quiet",
                    "--register=no",
                    "--keep-unit",
                    "--boot",
                    "--console=pipe",
                    f"--machine={self.name}",
                    "-D",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def leader() -> int:
            assert self.process is not None
            if self.process.poll() is not None:
                raise MachineError(
                    f"systemd-nspawn exited {self.process.returncode} before the container booted; this machine "
                    f"refuses containers. Its output:\n{self.console_text()}"
                )
            kids = _children(self.process.pid)
            if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
                return kids[0]
            return 0

        self.leader = until(leader, timeout, "the container's PID 1 (systemd)")
        # PID 1 answers on its private bus once it has set itself up; before, systemctl cannot connect.
        until(
            lambda: self.run(["test", "-S", "/run/systemd/private"], check=False).returncode == 0,
            timeout,
            f"the container's systemd to listen on its bus; console:\n{self.console_text()}",
        )
        # is-system-running --wait returns once boot is done: "running", or "degraded" if some unit failed.
        state = self.run(["systemctl", "is-system-running", "--wait"], timeout=timeout, check=False).stdout.strip()
        if state not in ("running", "degraded"):
            raise MachineError(f"the container did not finish booting (state {state!r}):\n{self.console_text()}")

    def poweroff(self, timeout: float = 60.0) -> None:
        """Power off (SIGTERM makes nspawn ask the container to halt); SIGKILL after ``timeout``; delete it."""
        try:
            if self.process is not None and self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(30)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")[-4000:] if self.console.exists() else ""

    # -- driving -----------------------------------------------------------------------------------------
    def command(self, argv: Sequence[str], env: dict[str, str] | None = None, user: str = "") -> list[str]:
        """The host's argv that runs ``argv`` inside, as root (or ``user`` via setpriv), with a clean environment."""
        enter = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "SYSTEMD_PAGER": "", **(env or {})}
        prefix = ["env", "-i", *[f"{k}={v}" for k, v in environment.items()]]
        if user:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return [*enter, *prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        user: str = "",
        timeout: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside and wait for it; ``check`` raises with its output when it exits non-zero."""
        result = subprocess.run(
            self.command(argv, env, user), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["bash", "-o", "pipefail", "-c", script], **kwargs)

    def path(self, inside: str) -> Path:
        """A path inside, seen from the host (the container's root is a folder here)."""
        return self.root / inside.lstrip("/")


@contextlib.contextmanager
def booted(image: Path, name: str = "vocwatch-test") -> Iterator[Machine]:
    machine = Machine(image, name)
    try:
        machine.boot()
        yield machine
    finally:
        machine.poweroff()
