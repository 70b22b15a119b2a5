"""A cached minimal Debian 12 root for the systemd tests: debootstrap once, reused while its package list holds.

The cache lives outside git (``VOCWATCH_SYSTEMD_CACHE``, default /var/cache/vocwatch-systemd-test) under a
name derived from the suite, mirror and package list, so changing the list builds a new root; each test run
boots a throwaway copy, never the cached root itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd as PID 1 with its bus; python3 (3.11) for the package's venv; jq for the README's recipes;
# procps and adduser for the maintainer scripts; acl for the inbox's default ACLs; sqlite3 to read the ledger raw.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "jq",
    "procps",
    "adduser",
    "acl",
    "sqlite3",
    "ca-certificates",
)
CACHE = Path(os.environ.get("VOCWATCH_SYSTEMD_CACHE", "/var/cache/vocwatch-systemd-test"))


def key() -> str:
    """Names the cached root after everything that decides its content."""
    text = "\n".join((SUITE, MIRROR, *sorted(PACKAGES)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_root() -> Path:
    """The cached root for today's package list, built by debootstrap when missing (a few minutes)."""
    root = CACHE / f"{SUITE}-{key()}"
    if (root / "usr/lib/systemd/systemd").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log = partial / "debootstrap/debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"debootstrap failed ({result.returncode}): {result.stderr[-2000:]}\n{tail}")
    # The copy boots with its own machine id (systemd makes one on first boot) and no apt lists to go stale.
    (partial / "etc/machine-id").write_text("")
    partial.rename(root)
    # A root for an older package list is never booted again: reclaim its space.
    for stale in CACHE.glob(f"{SUITE}-*"):
        if stale != root and not stale.name.endswith(".partial"):
            shutil.rmtree(stale, ignore_errors=True)
    return root


if __name__ == "__main__":
    print(cached_root())
    sys.exit(0)
