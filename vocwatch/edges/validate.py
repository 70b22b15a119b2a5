"""Checks of a recording and its sidecar before upload; each failure is a Problem with a reason code."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import signal
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from vocwatch.core.model import Problem
from vocwatch.core.reasons import Reason

MAX_SIDECAR_BYTES = 64 * 1024
HEAD_BYTES = 12
_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")
CONTENT_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav"}


def check_recording_id(value: object) -> Problem | None:
    if not isinstance(value, str):
        return Problem(Reason.MISSING_ID, 'the sidecar needs a string "id" (the recording\'s id)')
    if not _ID.fullmatch(value) or value in {".", ".."}:
        return Problem(
            Reason.INVALID_ID,
            f"id {value[:80]!r} must be 1-255 letters, digits, '.', '-' or '_', and not '.' or '..'",
        )
    return None


def parse_sidecar(raw: bytes) -> dict[str, Any] | Problem:
    """The sidecar's JSON object, or the Problem with it. A UTF-8 BOM is tolerated."""
    if len(raw) > MAX_SIDECAR_BYTES:
        return Problem(Reason.SIDECAR_TOO_LARGE, f"sidecar is {len(raw)} bytes; at most 65536 are allowed")
    try:
        value = json.loads(raw.decode("utf-8-sig"), parse_float=_finite_float, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return Problem(Reason.SIDECAR_NOT_JSON, f"sidecar is not valid UTF-8 JSON: {exc}")
    except RecursionError:
        return Problem(Reason.SIDECAR_NOT_JSON, "sidecar is nested too deeply to be read as JSON")
    if not isinstance(value, dict):
        return Problem(Reason.SIDECAR_NOT_OBJECT, f"sidecar holds a JSON {type(value).__name__}, not an object")
    try:
        # A \ud800 escape parses, but no UTF-8 request body can carry it.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return Problem(
            Reason.SIDECAR_NOT_JSON, "sidecar holds a lone surrogate escape (e.g. \\ud800), which is not text"
        )
    problem = check_recording_id(value.get("id"))
    return problem if problem is not None else value


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON text, but it parses to inf, which would be sent as Infinity: not JSON.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large to be a number the API can read")
    return value


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, but they are not JSON and the API could not parse them.
    raise ValueError(f"{name} is not a JSON value")


def build_metadata(
    sidecar: Mapping[str, Any] | None, stem: str, defaults: Mapping[str, Any]
) -> dict[str, Any] | Problem:
    """The metadata to send: config defaults under the sidecar's own keys, or ``{"id": stem}``."""
    own = dict(sidecar) if sidecar is not None else {"id": stem}
    problem = check_recording_id(own.get("id"))
    if problem is not None:
        return problem
    return {**defaults, **own}


def check_audio(name: str, size: int, head: bytes, max_bytes: int) -> Problem | None:
    """Extension, size and magic bytes of a recording."""
    suffix = Path(name).suffix.lower()
    if suffix not in CONTENT_TYPES:
        return Problem(Reason.UNSUPPORTED_FORMAT, f"{name}: only .mp3 and .wav recordings are accepted")
    if size == 0:
        return Problem(Reason.EMPTY_FILE, f"{name} is empty (0 bytes)")
    if size > max_bytes:
        return Problem(Reason.TOO_LARGE, f"{name} is {size} bytes; the limit (upload.max_bytes) is {max_bytes}")
    if suffix == ".wav" and not (head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE"):
        return Problem(Reason.CONTENT_MISMATCH, f"{name} has no RIFF/WAVE header; it is not a WAV file")
    if suffix == ".mp3" and not (head[:3] == b"ID3" or _is_mpeg_sync(head)):
        return Problem(Reason.CONTENT_MISMATCH, f"{name} has no ID3 tag or MPEG frame sync; it is not an MP3")
    return None


def _is_mpeg_sync(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def open_regular(path: Path) -> int | Problem:
    """Open ``path`` for reading without following a link; refuse anything but a regular file.
    The check is made on the opened descriptor, so a file swapped after a stat is still caught.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below, unread.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            return Problem(Reason.NOT_REGULAR_FILE, f"{path.name} is a symbolic link; links are never followed")
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # a socket or device node
            return Problem(Reason.NOT_REGULAR_FILE, f"{path.name} is not a regular file ({_describe(path)})")
        return Problem(Reason.UNREADABLE, f"{path.name} could not be opened: {exc.strerror}")
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return fd
        problem = Problem(Reason.NOT_REGULAR_FILE, f"{path.name} is not a regular file ({_describe_mode(mode)})")
    except OSError as exc:
        problem = Problem(Reason.UNREADABLE, f"{path.name} could not be read: {exc.strerror}")
    os.close(fd)
    return problem


def open_for_writing(path: Path) -> bool | None:
    """Whether any process has ``path`` open for writing, or None when the kernel will not say:
    a read lease is refused (EAGAIN) exactly while the file is open for writing somewhere.
    """
    if getattr(fcntl, "F_SETLEASE", None) is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fd_open_for_writing(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


# A writer that opens the file while the probe holds its lease breaks it, and the kernel signals the
# lease holder: SIGIO by default, whose default action ends the process. SIGURG's default is to ignore.
_LEASE_BREAK_SIGNAL = getattr(signal, "SIGURG", 0)


def fd_open_for_writing(fd: int) -> bool | None:
    """``open_for_writing`` for a descriptor opened read-only (the pipeline's own, after a claim)."""
    set_lease = getattr(fcntl, "F_SETLEASE", None)
    if set_lease is None:
        return None
    try:
        set_sig = getattr(fcntl, "F_SETSIG", None)
        if set_sig is not None:
            fcntl.fcntl(fd, set_sig, _LEASE_BREAK_SIGNAL)
        fcntl.fcntl(fd, set_lease, fcntl.F_RDLCK)
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
    except OSError as exc:
        # EACCES: not the file's owner and no CAP_LEASE; EINVAL, ENOLCK: a filesystem without leases.
        return True if exc.errno == errno.EAGAIN else None
    return False


LeaseReach = Literal["any", "own", "none"]


def lease_reach(folder: Path) -> LeaseReach | None:
    """Which files on ``folder``'s filesystem the read-lease probe can answer for: any (CAP_LEASE), only
    those vocwatch owns, or none (a filesystem without leases, as NFS and SMB mounts mostly are).
    None: no file could be made in ``folder`` to ask."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".vocwatch-lease-")
    except OSError:
        return None
    os.close(fd)
    try:
        answer = open_for_writing(Path(name))
    finally:
        os.unlink(name)
    if answer is None:
        return "none"
    return "any" if has_cap_lease() else "own"


CAP_LEASE = 28


def has_cap_lease() -> bool:
    """Whether this process holds CAP_LEASE where it counts: the kernel asks for it in the initial user
    namespace, so inside another (systemd's PrivateUsers=yes, a container) it never reaches others' files."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as uid_map:
            if uid_map.read().split() != ["0", "0", "4294967295"]:
                return False
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_LEASE & 1)
    except (OSError, ValueError):
        pass
    return False


def _describe(path: Path) -> str:
    try:
        return _describe_mode(os.lstat(path).st_mode)
    except OSError:
        return "not a regular file"


def _describe_mode(mode: int) -> str:
    for test, label in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return label
    return "not a regular file"


def read_small(fd: int, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes, enough to tell that a file is over ``limit``."""
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
