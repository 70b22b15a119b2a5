"""sd_notify: the real daemon, in a subprocess, talks to a notify socket of our own as it would to systemd."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Spool, drop, wait_for

from vocwatch.edges.notify import SdNotifier, from_environment, watchdog_interval

WATCHDOG_USEC = 400_000
GRACE_S = 2

# Starts the daemon as systemd would: WATCHDOG_PID is the main process (exec keeps the pid). With "mdwe", first
# PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN), the kernel's form of the unit's MemoryDenyWriteExecute=yes: no memory
# both writable and executable, none made executable later. It survives exec, so the whole daemon runs under it.
LAUNCH = """
import ctypes, os, sys
if sys.argv[1] == "mdwe" and ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "vocwatch", *sys.argv[2:]])
"""


def mdwe_supported() -> bool:
    probe = "import ctypes, sys; sys.exit(ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


class NotifySocket:
    """A bound AF_UNIX datagram socket; a thread keeps every message (parsed KEY=VALUE lines) with its time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)  # how often the reader looks at the stop flag, not a wait for a message
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.snapshot() if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def first(listener: NotifySocket, key: str, where: Callable[[dict[str, str]], bool] = lambda m: True) -> Any:
    return next((m for _, m in listener.with_key(key) if where(m)), None)


@pytest.mark.parametrize("guard", ["plain", "mdwe"], ids=["plain", "memory-deny-write-execute"])
def test_daemon_sends_ready_status_watchdog_then_stopping_on_sigterm(
    guard: str, tmp_path: Path, spool: Spool, make_settings: Callable[..., Any], notify_socket: NotifySocket
) -> None:
    if guard == "mdwe" and not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later) to stand in for MemoryDenyWriteExecute")
    make_settings(upload__shutdown_grace_seconds=GRACE_S)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    log = (tmp_path / "daemon.log").open("w")
    command = [sys.executable, "-c", LAUNCH, guard, "run", "--config", str(tmp_path / "config.toml")]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = wait_for(lambda: first(notify_socket, "READY"), what="READY=1")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("ok; pending 0")
        drop(spool.inbox, "call-1.wav", "call-1")
        wait_for(lambda: first(notify_socket, "STATUS", lambda m: "done 1" in m["STATUS"]), what="STATUS done 1")
        # The pace must beat WATCHDOG_USEC, which only happens when WATCHDOG_PID names the daemon itself.
        pings = wait_for(lambda: (p := notify_socket.with_key("WATCHDOG"))[5:] and p, what="six WATCHDOG=1")
        assert all(m["WATCHDOG"] == "1" for _, m in pings)
        average_gap = (pings[-1][0] - pings[0][0]) / (len(pings) - 1)
        assert average_gap < WATCHDOG_USEC / 1e6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    stopping = wait_for(lambda: first(notify_socket, "STOPPING"), what="STOPPING=1")
    assert stopping["STOPPING"] == "1"
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) == (GRACE_S + 10) * 1_000_000
    order = [next(iter(m)) for _, m in notify_socket.snapshot()]
    assert order[0] == "READY" and order[-1] == "STOPPING"
    assert (spool.done / "call-1.wav").exists()


def test_abstract_namespace_address_is_reached() -> None:
    listener = NotifySocket("@vocwatch-test-" + secrets.token_hex(8))
    notifier = SdNotifier(listener.address)
    try:
        notifier.notify("STATUS=hello")
        assert wait_for(lambda: first(listener, "STATUS"), what="STATUS=hello") == {"STATUS": "hello"}
    finally:
        notifier.close()
        listener.close()


def test_notify_without_a_listener_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    notifier = from_environment()
    assert isinstance(notifier, SdNotifier)
    notifier.notify("READY=1")  # systemd gone (or never there) must not stop the daemon
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("400000", "self", 0.2),
        ("400000", None, 0.2),
        ("400000", "other", None),
        ("0", "self", None),
        ("soon", "self", None),
        (None, "self", None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_the_watched_process_only(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str({"self": os.getpid(), "other": os.getppid()}.get(value, value)))
    assert watchdog_interval() == expected
