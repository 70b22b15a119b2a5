"""Helpers for the ingestion tests: producers that write the way real ones do, settings, captured logs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import threading
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from conftest import TENANT, Spool

from vocwatch.edges.config import Settings, load_settings
from vocwatch.edges.logs import configure
from vocwatch.testing.samples import RATE, pcm_tone


def wav_bytes(freq: float, size: int | None = None) -> bytes:
    """A WAV with its own tone (so its own content hash), about ``size`` bytes or a quarter second."""
    frames = max(1, (size - 44) // 2) if size else RATE // 4
    pcm = (pcm_tone(1.0, freq) * (frames // RATE + 1))[: frames * 2]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar(rid: Any, **extra: Any) -> bytes:
    return json.dumps({"id": rid, "kind": "phonecall", **extra}).encode()


def put(path: Path, data: bytes) -> None:
    """Write in place, the way a careless producer does (an open, writes, a close)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def put_atomic(path: Path, data: bytes, temp_name: str | None = None) -> None:
    """The atomic drop: write under an ignored name, then rename into place."""
    temp = path.with_name(temp_name or f".{path.name}.tmp")
    put(temp, data)
    os.rename(temp, path)


def slow_write(path: Path, data: bytes, *, chunks: int, pause_s: float, reopen: bool = False) -> None:
    """A producer writing ``data`` in pieces at its own pace, with one handle or reopening for each piece."""
    size = -(-len(data) // chunks)
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    pace = threading.Event()  # the writer's rhythm, not a wait for a result
    if reopen:
        for piece in pieces:
            with open(path, "ab") as fh:
                fh.write(piece)
            pace.wait(pause_s)
        return
    with open(path, "wb") as fh:
        for piece in pieces:
            fh.write(piece)
            fh.flush()
            pace.wait(pause_s)


def make_socket(path: Path) -> None:
    # Bound through /proc/self/fd so the path stays under the 108-byte limit of sun_path.
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        sock.close()
        os.close(folder)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_settings(spool: Spool, base_url: str, path: Path, **overrides: Any) -> Settings:
    """Settings for a spool; keyword ``section__key=value`` overrides (dicts become inline tables)."""
    sections: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "tenant_id": TENANT},
        "folders": {"inbox": spool.inbox, "done": spool.done, "failed": spool.failed},
        "ledger": {"path": spool.ledger_path},
        "upload": {"workers": 2, "shutdown_grace_seconds": 5},
        "watch": {"settle_seconds": 0.2, "rescan_seconds": 5},
        "status": {"poll": False},
    }
    for name, value in overrides.items():
        section, _, key = name.partition("__")
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, keys in sections.items():
        lines += [f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in keys.items())]
    path.write_text("\n".join(lines) + "\n")
    return load_settings(path)


@contextmanager
def captured_log() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """vocwatch's structured log as parsed JSON lines, for as long as the block runs."""
    buf = io.StringIO()
    configure("debug", "json", stream=buf)
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    finally:
        structlog.reset_defaults()


@contextmanager
def notify_socket() -> Iterator[tuple[str, Callable[[], list[str]]]]:
    """A real sd_notify socket: its $NOTIFY_SOCKET address, and what has been sent to it so far."""
    name = "vocwatch-test-" + secrets.token_hex(8)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    received: list[str] = []

    def messages() -> list[str]:
        while True:
            try:
                received.append(sock.recv(65536).decode())
            except BlockingIOError:
                return received

    try:
        yield "@" + name, messages
    finally:
        sock.close()


@contextmanager
def folder_chain(root: Path, depth: int, name: str = "d") -> Iterator[list[Path]]:
    """``depth`` empty folders nested in ``root``, made and removed one level at a time: os.makedirs and
    shutil.rmtree recurse once per level, and fail on such a chain (RecursionError)."""
    chain: list[Path] = []
    try:
        for _ in range(depth):
            chain.append((chain[-1] if chain else root) / name)
            chain[-1].mkdir()
        yield chain
    finally:
        for folder in reversed(chain):  # whatever a test left in them goes too: pytest's rmtree would recurse
            for left in folder.iterdir():
                if not left.is_dir() or left.is_symlink():
                    left.unlink()
            folder.rmdir()
