"""A recording's own structure: real encoder output (lameenc, the stdlib's wave) cut at every offset that matters.

core.audio decides from headers alone; edges.audio preads them from a descriptor opened safely and asks
mutagen for the duration. Each row of a table is one cut of one real file and the verdict it must get.
"""

from __future__ import annotations

import io
import os
import struct
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from vocwatch.core.audio import (
    HEAD_BYTES,
    TAIL_BYTES,
    Complete,
    Incomplete,
    Unknown,
    Verdict,
    check,
    parse_frame,
)
from vocwatch.core.model import Problem
from vocwatch.edges.audio import facts, structure
from vocwatch.testing.samples import RATE, pcm_tone, whole_frames


def lame(seconds: float, *, kbps: int = 32, rate: int = RATE, channels: int = 1) -> bytes:
    """A real MP3 from LAME (what the tests' producers and the demo write)."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(channels)
    encoder.set_quality(7)
    pcm = pcm_tone(seconds, rate=rate)
    if channels == 2:
        pcm = b"".join(pcm[i : i + 2] * 2 for i in range(0, len(pcm), 2))
    return bytes(encoder.encode(pcm) + encoder.flush())


def frame_offsets(data: bytes, start: int = 0) -> list[int]:
    """Where each frame starts, by walking the headers of the whole file (the slow, obvious way)."""
    offsets, at = [], start
    while at + 4 <= len(data) and (frame := parse_frame(data[at : at + 4])) is not None:
        offsets.append(at)
        at += frame.length
    return offsets


def wav(seconds: float = 0.5, *, channels: int = 1, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm_tone(seconds, rate=rate)[: int(seconds * rate) * 2] * channels)
    return buf.getvalue()


def id3v2(size: int = 300) -> bytes:
    """An ID3v2.3 tag with one text frame, padded to ``size`` bytes of body."""
    body = b"TIT2" + struct.pack(">I", 9) + b"\x00\x00" + b"\x00call-001"
    body += b"\x00" * (size - len(body))
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + body


ID3V1 = b"TAG" + b"call-001".ljust(30, b"\x00") + b"\x00" * 95
APE = b"APETAGEX" + struct.pack("<IIII", 2000, 32, 0, 0) + b"\x00" * 8  # a footer only: a 32-byte tag


def verdict(data: bytes, kind: str = "mp3") -> Verdict:
    return check(kind, lambda offset, size: data[offset : offset + size], len(data))  # type: ignore[arg-type]


SHORT = lame(1.0)  # 16 frames of 288 bytes: MPEG-2.5 layer III, 8 kHz mono (a telephone recording)
STEREO = lame(2.0, kbps=128, rate=44100, channels=2)  # MPEG-1 layer III, padded frames of 417/418 bytes
LONG = whole_frames(STEREO * (5_000_000 // len(STEREO) + 1), 5_000_000)  # ~5 MB: only head and tail are read
TAGGED = id3v2() + SHORT


def _frames(data: bytes, start: int = 0) -> list[int]:
    return frame_offsets(data, start)


S = _frames(SHORT)
L = _frames(LONG)
T = _frames(TAGGED, len(id3v2()))

# (id, the bytes, expected verdict type, expected cut offset or declared bytes where it matters)
MP3_CASES: list[tuple[str, bytes, type, Callable[[Verdict], bool] | None]] = [
    ("whole", SHORT, Complete, None),
    ("one_byte", SHORT[:1], Incomplete, lambda v: v.cut_offset == 0),  # type: ignore[union-attr]
    ("mid_first_header", SHORT[:3], Incomplete, lambda v: v.cut_offset == 0),  # type: ignore[union-attr]
    ("first_header_only", SHORT[:4], Incomplete, lambda v: v.cut_offset == 0),  # type: ignore[union-attr]
    ("mid_first_frame", SHORT[:100], Incomplete, lambda v: v.cut_offset == 0 and v.declared == 288),  # type: ignore[union-attr]
    ("at_first_boundary", SHORT[: S[1]], Complete, None),
    ("mid_second_header", SHORT[: S[1] + 2], Incomplete, lambda v: v.cut_offset == S[1]),  # type: ignore[union-attr]
    ("mid_last_frame", SHORT[:-1], Incomplete, lambda v: v.cut_offset == S[-1] and v.declared == len(SHORT)),  # type: ignore[union-attr]
    ("at_last_boundary", SHORT[: S[-1]], Complete, None),
    ("id3v2_whole", TAGGED, Complete, None),
    ("inside_id3v2_header", TAGGED[:7], Incomplete, lambda v: v.cut_offset == 0),  # type: ignore[union-attr]
    ("inside_id3v2", TAGGED[:200], Incomplete, lambda v: v.declared == len(id3v2())),  # type: ignore[union-attr]
    ("id3v2_then_nothing", TAGGED[: len(id3v2())], Incomplete, lambda v: v.cut_offset == len(id3v2())),  # type: ignore[union-attr]
    ("id3v2_mid_frame", TAGGED[: T[3] + 50], Incomplete, lambda v: v.cut_offset == T[3]),  # type: ignore[union-attr]
    ("id3v1_at_end", SHORT + ID3V1, Complete, None),
    ("inside_id3v1", SHORT + ID3V1[:60], Incomplete, lambda v: v.cut_offset == len(SHORT)),  # type: ignore[union-attr]
    ("ape_footer_at_end", SHORT + APE, Complete, None),
    ("ape_then_id3v1", SHORT + APE + ID3V1, Complete, None),
    ("cut_frame_before_id3v1", SHORT[:-10] + ID3V1, Incomplete, lambda v: v.cut_offset == S[-1]),  # type: ignore[union-attr]
    ("stereo_whole", STEREO, Complete, None),
    ("stereo_mid_padded_frame", STEREO[: _frames(STEREO)[7] + 400], Incomplete, None),
    ("long_whole", LONG, Complete, None),
    ("long_mid_last_frame", LONG[: L[-1] + 200], Incomplete, lambda v: v.cut_offset == L[-1]),  # type: ignore[union-attr]
    ("long_mid_header", LONG[: L[-1] + 3], Incomplete, lambda v: v.cut_offset == L[-1]),  # type: ignore[union-attr]
    ("long_at_boundary", LONG[: L[-40]], Complete, None),
    ("long_mid_frame_deep", LONG[: L[len(L) // 2] + 17], Incomplete, lambda v: v.cut_offset == L[len(L) // 2]),  # type: ignore[union-attr]
    ("long_id3v1", LONG + ID3V1, Complete, None),
    ("text_named_mp3", b"these are the minutes of the call" * 10, Unknown, None),
    ("junk_after_frames", SHORT + b"this is no frame" * 4, Unknown, None),
]


@pytest.mark.parametrize(("data", "expected", "detail"), [c[1:] for c in MP3_CASES], ids=[c[0] for c in MP3_CASES])
def test_mp3_cut_at_every_interesting_offset(
    data: bytes, expected: type, detail: Callable[[Verdict], bool] | None
) -> None:
    found = verdict(data)
    assert isinstance(found, expected), found
    if detail is not None:
        assert detail(found), found


def test_mp3_cut_after_every_byte_of_the_last_frames_is_never_complete() -> None:
    # Every cut inside the last two frames (header bytes included) is Incomplete; every boundary is Complete.
    for end in range(S[-2], len(SHORT) + 1):
        found = verdict(SHORT[:end])
        assert isinstance(found, Complete if end in (*S, len(SHORT)) else Incomplete), (end, found)


def test_the_long_file_is_read_in_two_windows_only() -> None:
    reads: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return LONG[offset : offset + size]

    assert isinstance(check("mp3", read, len(LONG)), Complete)
    assert sum(size for _, size in reads) <= HEAD_BYTES + TAIL_BYTES + 512
    assert len(reads) <= 8


def test_mp3_verdict_says_what_the_headers_say() -> None:
    found = verdict(STEREO)
    assert isinstance(found, Complete)
    assert (found.info.codec, found.info.sample_rate, found.info.channels) == ("mp3", 44100, 2)


def test_the_message_of_a_cut_frame_names_its_offset() -> None:
    found = verdict(SHORT[:-1])
    assert isinstance(found, Incomplete)
    assert f"cut at byte {S[-1]}" in found.message() and f"declared {len(SHORT)} bytes" in found.message()


# -- WAV ----------------------------------------------------------------------------------

W = wav()  # 44-byte header (RIFF, fmt, data), then 8,000 bytes of samples
LIST = b"LIST" + struct.pack("<I", 12) + b"INFOISFT\x00\x00\x00\x00"


def with_sizes(data: bytes, riff: int | None = None, data_size: int | None = None) -> bytes:
    out = bytearray(data)
    if riff is not None:
        out[4:8] = struct.pack("<I", riff)
    if data_size is not None:
        at = out.find(b"data")
        out[at + 4 : at + 8] = struct.pack("<I", data_size)
    return bytes(out)


def with_list_after_data(data: bytes) -> bytes:
    return with_sizes(data + LIST, riff=len(data) + len(LIST) - 8)


WAV_CASES: list[tuple[str, bytes, type, Callable[[Verdict], bool] | None]] = [
    ("whole", W, Complete, lambda v: v.info.duration_s == 0.5),  # type: ignore[union-attr]
    ("inside_riff_header", W[:6], Incomplete, None),
    ("inside_fmt_chunk", W[:30], Incomplete, lambda v: v.declared == len(W)),  # type: ignore[union-attr]
    ("inside_data_chunk_header", W[:40], Incomplete, lambda v: v.declared == len(W)),  # type: ignore[union-attr]
    ("header_only", W[:44], Incomplete, lambda v: (v.declared, v.present) == (len(W), 44)),  # type: ignore[union-attr]
    ("inside_data", W[:4000], Incomplete, lambda v: (v.declared, v.present) == (len(W), 4000)),  # type: ignore[union-attr]
    ("one_byte_short", W[:-1], Incomplete, None),
    ("list_after_data", with_list_after_data(W), Complete, None),
    ("cut_inside_list_after_data", with_list_after_data(W)[:-5], Incomplete, None),
    ("streaming_riff_ffffffff", with_sizes(W, riff=0xFFFFFFFF, data_size=0xFFFFFFFF), Unknown, None),
    ("streaming_zero_sizes", with_sizes(W, riff=0, data_size=0), Unknown, None),
    ("streaming_cut_anywhere", with_sizes(W, riff=0xFFFFFFFF, data_size=0xFFFFFFFF)[:3001], Unknown, None),
    ("streaming_before_data", with_sizes(W, riff=0xFFFFFFFF)[:30], Incomplete, None),
    ("bytes_after_riff", W + b"\x00" * 10, Unknown, None),
    ("rf64", b"RF64" + W[4:], Unknown, None),
    ("mp3_named_wav", SHORT, Unknown, None),
    ("empty", b"", Unknown, None),
]


@pytest.mark.parametrize(("data", "expected", "detail"), [c[1:] for c in WAV_CASES], ids=[c[0] for c in WAV_CASES])
def test_wav_cut_at_every_interesting_offset(
    data: bytes, expected: type, detail: Callable[[Verdict], bool] | None
) -> None:
    found = verdict(data, "wav")
    assert isinstance(found, expected), found
    if detail is not None:
        assert detail(found), found


def test_placeholder_sizes_are_told_apart_from_an_unreadable_file() -> None:
    streaming = verdict(with_sizes(W, riff=0xFFFFFFFF, data_size=0xFFFFFFFF), "wav")
    assert isinstance(streaming, Unknown) and streaming.placeholder
    odd = verdict(W + b"\x00" * 10, "wav")
    assert isinstance(odd, Unknown) and not odd.placeholder


def test_an_odd_data_chunk_without_its_pad_byte_is_complete() -> None:
    # 1 channel of 8-bit samples, 4001 bytes: RIFF says 8 + 36 + 4001 + 1 (the pad), the writer left the pad out.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(RATE)
        out.writeframes(b"\x80" * 4001)
    padded = buf.getvalue()
    assert isinstance(verdict(padded, "wav"), Complete)
    unpadded = with_sizes(padded[:-1], riff=len(padded) - 8) if len(padded) % 2 == 0 else padded
    assert isinstance(verdict(unpadded, "wav"), Complete)


# -- on real files, through the descriptor ------------------------------------------------


def test_structure_preads_a_real_file_and_refuses_links_and_fifos(tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(SHORT[:-1])
    found = structure(cut)
    assert isinstance(found, Incomplete) and found.cut_offset == S[-1]
    (tmp_path / "link.mp3").symlink_to(cut)
    assert isinstance(structure(tmp_path / "link.mp3"), Problem)
    os.mkfifo(tmp_path / "fifo.wav")
    assert isinstance(structure(tmp_path / "fifo.wav"), Problem)  # refused, never waited on


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("call.wav", W, (0.5, "pcm", RATE, 1)),
        ("call.mp3", SHORT, (1.152, "mp3", RATE, 1)),
        ("stereo.mp3", STEREO, (None, "mp3", 44100, 2)),
        ("cut.wav", W[:4022], (0.25, "pcm", RATE, 1)),
    ],
)
def test_facts_come_from_mutagen_and_the_headers(
    tmp_path: Path, name: str, data: bytes, expected: tuple[float | None, str, int, int]
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with open(path, "rb") as fh:
        fh.seek(7)
        got = facts(fh, name, structure(path))  # type: ignore[arg-type]
        assert fh.tell() == 7, "the upload's offset is left where it was"
    duration, codec, rate, channels = expected
    assert (got.codec, got.sample_rate, got.channels) == (codec, rate, channels)
    assert got.duration_s is not None
    if duration is not None:
        assert got.duration_s == pytest.approx(duration, abs=0.01)


def test_facts_of_a_file_mutagen_cannot_read_are_null(tmp_path: Path) -> None:
    path = tmp_path / "text.mp3"
    path.write_bytes(b"not audio at all")
    with open(path, "rb") as fh:
        got = facts(fh, path.name, structure(path))  # type: ignore[arg-type]
    assert (got.duration_s, got.sample_rate, got.channels) == (None, None, None)
