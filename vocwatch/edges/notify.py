"""sd_notify over the documented datagram protocol (READY, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Protocol


class Notifier(Protocol):
    def notify(self, message: str) -> None: ...


class NullNotifier:
    def notify(self, message: str) -> None:
        return None


class SdNotifier:
    """Sends to $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace); errors are ignored."""

    def __init__(self, address: str) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, message: str) -> None:
        # systemd going away (or a full socket buffer) must never stop the daemon.
        with contextlib.suppress(OSError):
            self._sock.sendto(message.encode(), self._address)

    def close(self) -> None:
        self._sock.close()


def from_environment() -> Notifier:
    address = os.environ.get("NOTIFY_SOCKET")
    return SdNotifier(address) if address else NullNotifier()


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, in seconds, when this process is the one being watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None  # a garbled variable must not keep the daemon from starting
    return value / 2_000_000 if value > 0 else None
