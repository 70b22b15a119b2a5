"""Filesystem types for ``watch.mode = "auto"``: statfs(2)'s f_type of a path, and the mounts below a folder.

Python's os.statvfs leaves f_type out, so statfs is called through ctypes (glibc or musl); the mounts come
from /proc/self/mountinfo. Both answer None or nothing where they cannot (another OS, no /proc): auto then
keeps inotify, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache
from pathlib import Path

_STATFS_SIZE = 256  # larger than struct statfs on every Linux ABI; f_type is its first field


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def fs_type(path: Path | str) -> int | None:
    """The statfs f_type of the filesystem ``path`` lies on (a magic number, core.filesystems), or None."""
    libc = _libc()
    if libc is None or not hasattr(libc, "statfs"):
        return None
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    # f_type is a (signed) long; the magic numbers are 32-bit values (CIFS's 0xFF534D42 is negative as int32).
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_below(folder: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points strictly below ``folder`` (a recursive inbox watches into them too)."""
    try:
        text = Path(mountinfo).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    try:
        root = folder.resolve()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(_unescape(fields[4]))
        if point != root and root in point.parents:
            found.append(str(point))
    return sorted(set(found))
