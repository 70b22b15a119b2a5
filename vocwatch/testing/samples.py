"""Real, small recordings for the demo, the tests and the benchmark: WAV from the stdlib, MP3 via lameenc."""

from __future__ import annotations

import json
import math
import struct
import wave
from pathlib import Path
from typing import Any

from vocwatch.core.audio import parse_frame

RATE = 8000  # telephone audio


def pcm_tone(seconds: float, freq: float = 440.0, rate: int = RATE) -> bytes:
    frames = int(seconds * rate)
    return b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(min(frames, rate))
    ) * max(1, math.ceil(frames / rate))


def write_wav(path: Path, seconds: float = 1.0, freq: float = 440.0, *, target_bytes: int | None = None) -> Path:
    """A mono 16-bit WAV; ``target_bytes`` pads the duration to reach about that size."""
    if target_bytes is not None:
        seconds = max(0.01, (target_bytes - 44) / (2 * RATE))
    pcm = pcm_tone(seconds, freq)[: int(seconds * RATE) * 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return path


def write_mp3(path: Path, seconds: float = 1.0, freq: float = 660.0, *, target_bytes: int | None = None) -> Path:
    """An MP3 encoded with LAME; ``target_bytes`` repeats whole frames to reach about that size."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(RATE)
    encoder.set_channels(1)
    encoder.set_quality(7)
    data = bytes(encoder.encode(pcm_tone(seconds, freq)) + encoder.flush())
    if target_bytes is not None and len(data) < target_bytes:
        data = whole_frames(data * (target_bytes // len(data) + 1), target_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def whole_frames(data: bytes, limit: int) -> bytes:
    """``data`` (MPEG frames) cut at the last frame boundary within ``limit`` bytes: never mid-frame."""
    at = 0
    while at + 4 <= len(data):
        frame = parse_frame(data[at : at + 4])
        if frame is None or at + frame.length > limit:
            break
        at += frame.length
    return data[:at]


def write_sidecar(path: Path, recording_id: str, **extra: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": recording_id, "kind": "phonecall", "source": "vocwatch-demo", **extra}))
    return path
