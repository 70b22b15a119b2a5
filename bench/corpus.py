"""The corpus: real WAV and MP3 recordings with sidecars, generated once into bench/work/ and reused.

Each run gets a fresh inbox filled with hard links to the corpus (vocwatch moves what it uploads,
so the corpus itself is never touched). The backlog for the scale run is a separate set of tiny
(~1 KB) valid WAVs, also generated once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import wave
from dataclasses import dataclass
from pathlib import Path

from vocwatch.testing.samples import write_mp3, write_sidecar, write_wav

VERSION = 3  # 3: MP3s end on a whole frame (samples.whole_frames)
CLASSES: dict[str, tuple[int, int]] = {  # name: (files, target bytes each)
    "small": (500, 200 * 1000),
    "medium": (200, 2 * 1000 * 1000),
    "large": (20, 20 * 1000 * 1000),
}
CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg"}


@dataclass(frozen=True, slots=True)
class Item:
    audio: Path
    sidecar: Path
    recording_id: str
    size: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.audio.suffix]


def _load(manifest: Path) -> dict[str, list[Item]] | None:
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if raw.get("version") != VERSION or set(raw.get("classes", {})) != set(CLASSES):
        return None
    root = manifest.parent
    out: dict[str, list[Item]] = {}
    for name, rows in raw["classes"].items():
        items = [Item(root / a, root / s, rid, size) for a, s, rid, size in rows]
        if len(items) != CLASSES[name][0] or not all(i.audio.exists() and i.sidecar.exists() for i in items):
            return None
        out[name] = items
    return out


def ensure_corpus(root: Path) -> tuple[dict[str, list[Item]], float]:
    """The corpus under ``root`` (generated if missing or stale) and the seconds spent generating."""
    manifest = root / "manifest.json"
    loaded = _load(manifest)
    if loaded is not None:
        return loaded, 0.0
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    out: dict[str, list[Item]] = {}
    rows: dict[str, list[tuple[str, str, str, int]]] = {}
    for name, (count, target) in CLASSES.items():
        out[name], rows[name] = [], []
        for i in range(count):
            rid = f"bench-{name}-{i:05d}"
            audio = root / name / f"{rid}.{'mp3' if i % 2 else 'wav'}"
            freq = 300.0 + 7 * i  # every recording differs, so every sha256 differs
            if audio.suffix == ".mp3":
                write_mp3(audio, 1.0, freq, target_bytes=target)
            else:
                write_wav(audio, freq=freq, target_bytes=target)
            sidecar = write_sidecar(audio.with_suffix(".json"), rid, agent=f"agent-{i % 17}", direction="inbound")
            item = Item(audio, sidecar, rid, audio.stat().st_size)
            out[name].append(item)
            rows[name].append((str(audio.relative_to(root)), str(sidecar.relative_to(root)), rid, item.size))
    manifest.write_text(json.dumps({"version": VERSION, "classes": rows}))
    return out, time.monotonic() - started


def link_into(items: list[Item], inbox: Path) -> None:
    """Fill ``inbox`` with hard links to ``items`` (recording, then sidecar)."""
    inbox.mkdir(parents=True, exist_ok=True)
    for item in items:
        os.link(item.audio, inbox / item.audio.name)
        os.link(item.sidecar, inbox / item.sidecar.name)


def tiny_wav(pcm_bytes: int = 1000) -> bytes:
    """A valid mono 8 kHz 16-bit WAV of about 1 KB (a short ramp)."""
    samples = [(i * 97) % 4000 - 2000 for i in range(pcm_bytes // 2)]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return buf.getvalue()


def ensure_backlog(root: Path, count: int) -> tuple[list[tuple[str, str]], float]:
    """``count`` tiny pairs under ``root`` (reused when already there); names and seconds spent."""
    names = [(f"b{i:06d}.wav", f"b{i:06d}.json") for i in range(count)]
    marker = root / f".complete-{count}"
    if marker.exists():
        return names, 0.0
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = bytearray(tiny_wav())
    for i, (audio, side) in enumerate(names):
        base[44:48] = i.to_bytes(4, "little")  # unique content, still valid PCM
        with open(root / audio, "wb") as fh:
            fh.write(base)
        with open(root / side, "w") as fh:
            fh.write(f'{{"id":"backlog-{i:06d}","kind":"phonecall","source":"vocwatch-bench"}}')
    marker.touch()
    return names, time.monotonic() - started


def link_backlog(src: Path, names: list[tuple[str, str]], inbox: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for audio, side in names:
        os.link(src / audio, inbox / audio)
        os.link(src / side, inbox / side)
