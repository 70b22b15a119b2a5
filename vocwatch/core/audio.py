"""Is a recording complete by its own structure? A pure reading of WAV headers and MP3 frame headers.

Everything here reads through ``read(offset, size) -> bytes`` (fewer bytes at the end of the file) and
the file's ``size``, so it never touches a file itself: the edge (``vocwatch.edges.audio``) preads from
a descriptor opened with ``validate.open_regular``. Only headers are read, never the audio between them.

- WAV: the RIFF size and the ``data`` chunk's size say how long the file will be. Declaring more than the
  file holds means it is still being written (or was cut): Incomplete. Placeholder sizes (0 or 0xFFFFFFFF,
  written by streaming recorders until they close) say nothing: Unknown, and the settle rule alone decides.
- MP3: a chain of frames, each header stating its own length. The chain is found at the first frame sync
  (after an ID3v2 tag) and, for files longer than one window, picked up again in the last ``TAIL_BYTES``
  before any ID3v1/APE/Lyrics3 tag: a header whose frame runs past the end of the file is a cut frame.
  Walking every frame header of a 5 MB file would cost ~18,000 reads; the resynchronised tail reads two
  small windows, and a chain must hold at least ``MIN_CHAIN`` headers of the first frame's version, layer
  and sample rate, so a stray 0xFF in the audio data cannot pass for one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Read = Callable[[int, int], bytes]
Kind = Literal["wav", "mp3"]

HEAD_BYTES = 8192  # where the first MP3 frame is looked for, after any ID3v2 tag
TAIL_BYTES = 16384  # the last window of an MP3's frames: at least 9 of the largest layer III frames
MIN_CHAIN = 3  # consecutive matching headers that make a frame chain
MAX_CHUNKS = 64  # RIFF chunks walked before giving up (a file of tiny chunks is not a recording)
PLACEHOLDERS = (0, 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the headers say of the audio; None where they do not say."""

    codec: str
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    info: StreamInfo


@dataclass(frozen=True, slots=True)
class Incomplete:
    """The structure says bytes are missing: ``declared`` vs ``present``, or the frame cut at ``cut_offset``."""

    why: str
    present: int
    declared: int | None = None
    cut_offset: int | None = None

    def message(self) -> str:
        parts = [self.why]
        if self.declared is not None:
            parts.append(f"declared {self.declared} bytes, {self.present} present")
        else:
            parts.append(f"{self.present} bytes present")
        if self.cut_offset is not None:
            parts.append(f"cut at byte {self.cut_offset}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Unknown:
    """The structure cannot tell (``placeholder``: sizes a streaming writer fills in only at its close)."""

    why: str
    placeholder: bool = False


Verdict = Complete | Incomplete | Unknown


@dataclass(frozen=True, slots=True)
class Seen:
    """A structural verdict (None: not a .wav or .mp3 name) and the recording's (size, mtime_ns, inode)
    when it was made: the planner's, handed to the worker with the claim, valid while the signature holds."""

    signature: tuple[int, int, int]
    verdict: Verdict | None


def kind_of(name: str) -> Kind | None:
    lower = name.lower()
    return "wav" if lower.endswith(".wav") else "mp3" if lower.endswith(".mp3") else None


def check(kind: Kind, read: Read, size: int) -> Verdict:
    """The structural verdict on a recording of ``size`` bytes."""
    if size <= 0:
        return Unknown("an empty file")  # validation refuses it (empty_file); nothing here to wait for
    return check_wav(read, size) if kind == "wav" else check_mp3(read, size)


def describe(verdict: Verdict) -> str:
    """One line for the ledger's ``structure`` column."""
    if isinstance(verdict, Complete):
        return "complete"
    if isinstance(verdict, Incomplete):
        return f"truncated: {verdict.message()}"
    return f"{'placeholder' if verdict.placeholder else 'unknown'}: {verdict.why}"


# -- WAV -----------------------------------------------------------------------------------

_WAV_CODECS = {1: "pcm", 2: "ms_adpcm", 3: "pcm_float", 6: "alaw", 7: "mulaw", 0x11: "ima_adpcm", 0x31: "gsm610"}
_WAV_CODECS |= {0x50: "mp2", 0x55: "mp3"}


def _le32(b: bytes) -> int:
    return int.from_bytes(b[:4], "little")


def check_wav(read: Read, size: int) -> Verdict:
    head = read(0, 12)
    if head[:4] == b"RF64":
        return Unknown("an RF64 file keeps its sizes in a ds64 chunk, which is not checked")
    if len(head) < 12:
        if b"RIFF".startswith(head[:4]):
            return Incomplete("cut inside the RIFF header", present=size, cut_offset=len(head))
        return Unknown("not a RIFF/WAVE file")
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return Unknown("not a RIFF/WAVE file")
    riff = _le32(head[4:8])
    riff_placeholder = riff in PLACEHOLDERS
    riff_end = 8 + riff
    limit = size if riff_placeholder else min(size, riff_end)
    pos, fmt, data, last_odd = 12, b"", None, False
    for _ in range(MAX_CHUNKS):
        if pos + 8 > limit:
            break
        chunk = read(pos, 8)
        cid, csize = chunk[:4], _le32(chunk[4:8])
        if cid == b"fmt ":
            fmt = read(pos + 8, min(csize, 40))
        if cid == b"data":
            data = (pos + 8, csize)
            if csize == 0xFFFFFFFF or (csize == 0 and size > pos + 8):
                return Unknown("placeholder sizes in the RIFF header (a streaming writer)", placeholder=True)
            if riff_placeholder:
                break
        pos += 8 + csize + (csize & 1)
        last_odd = bool(csize & 1)
    else:
        return Unknown(f"more than {MAX_CHUNKS} RIFF chunks")
    if data is None:
        if pos + 8 > size and (riff_placeholder or riff_end > size):
            declared = None if riff_placeholder else riff_end
            return Incomplete("the file ends before its data chunk", present=size, declared=declared, cut_offset=pos)
        return Unknown("no data chunk")
    if riff_placeholder:
        return Unknown("placeholder sizes in the RIFF header (a streaming writer)", placeholder=True)
    data_end = data[0] + data[1]
    if data_end > size:
        return Incomplete(f"the data chunk declares {data[1]} bytes of audio", present=size, declared=data_end)
    if riff_end > size and not (riff_end == size + 1 and last_odd):  # a last pad byte left out is no cut
        return Incomplete("the RIFF header declares more than the file holds", present=size, declared=riff_end)
    if riff_end < size - 1:
        return Unknown(f"{size - riff_end} bytes follow the RIFF chunk")
    return Complete(_wav_info(fmt, data[1]))


def wav_codec(tag: int) -> str:
    """The codec name of a WAV format tag (1: pcm, 7: mulaw, ...)."""
    return _WAV_CODECS.get(tag, f"wav_format_{tag:#06x}")


def _wav_info(fmt: bytes, data_size: int) -> StreamInfo:
    if len(fmt) < 16:
        return StreamInfo("wav")
    tag = int.from_bytes(fmt[0:2], "little")
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
        tag = int.from_bytes(fmt[24:26], "little")
    channels = int.from_bytes(fmt[2:4], "little")
    rate = _le32(fmt[4:8])
    byte_rate = _le32(fmt[8:12])
    return StreamInfo(
        wav_codec(tag),
        rate or None,
        channels or None,
        data_size / byte_rate if byte_rate else None,
    )


# -- MP3 -----------------------------------------------------------------------------------

_BITRATES = {  # kbps by (MPEG-1?, layer), index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


@dataclass(frozen=True, slots=True)
class Frame:
    """One MPEG audio frame header: its length in bytes and the stream it belongs to."""

    length: int
    stream: tuple[int, int, int]  # version bits, layer, sample rate index: the same for every frame
    sample_rate: int
    channels: int
    layer: int


def parse_frame(b: bytes) -> Frame | None:
    """The frame header in the first 4 bytes of ``b``, or None (free-format frames are not supported)."""
    if len(b) < 4 or b[0] != 0xFF or b[1] & 0xE0 != 0xE0:
        return None
    version = (b[1] >> 3) & 3
    layer = 4 - ((b[1] >> 1) & 3)
    index, rate_index = b[2] >> 4, (b[2] >> 2) & 3
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3 or b[3] & 3 == 2:
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][index - 1] * 1000
    rate = _RATES[version][rate_index]
    pad = (b[2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + pad) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + pad
    return Frame(length, (version, layer, rate_index), rate, 1 if b[3] >> 6 == 3 else 2, layer)


def _walk(buf: bytes, at: int, stream: tuple[int, int, int] | None) -> tuple[int, int, int, Frame | None]:
    """Follow frame headers in ``buf`` from ``at``: (frames, offset of the last header, where the chain
    stops, the first frame). The chain stops at a header that does not parse, or at or past the buffer's end."""
    frames, last, first = 0, at, None
    end = len(buf)
    while at + 4 <= end:
        frame = parse_frame(buf[at : at + 4])
        if frame is None or (stream is not None and frame.stream != stream):
            break
        if first is None:
            first, stream = frame, frame.stream
        frames, last, at = frames + 1, at, at + frame.length
    return frames, last, at, first


def _partial_tail(rest: bytes) -> bool:
    """Bytes after the last whole frame that are the start of something cut short: a frame header or a tag."""
    if not rest:
        return False
    if len(rest) < 4 and rest[0] == 0xFF and (len(rest) < 2 or rest[1] & 0xE0 == 0xE0):
        return True
    return any(
        tag.startswith(rest[: len(tag)]) and len(rest) < full for tag, full in ((b"TAG", 128), (b"APETAGEX", 32))
    )


def _tags_end(read: Read, size: int) -> int:
    """Where the audio ends: before an ID3v1 tag, Lyrics3v2 and an APEv2 tag at the end of the file."""
    end = size
    if end >= 128 and read(end - 128, 3) == b"TAG":
        end -= 128
    if end >= 15:
        lyrics = read(end - 15, 15)
        if lyrics[6:] == b"LYRICS200" and lyrics[:6].isdigit():
            end = max(0, end - 15 - int(lyrics[:6]))
    if end >= 32:
        footer = read(end - 32, 32)
        if footer[:8] == b"APETAGEX":
            has_header = int.from_bytes(footer[20:24], "little") & (1 << 31)
            end = max(0, end - _le32(footer[12:16]) - (32 if has_header else 0))
    return end


def _chain_in(
    buf: bytes, stream: tuple[int, int, int] | None, *, reach_end: bool, min_frames: int
) -> tuple[int, int, Frame]:
    """The first chain of at least ``min_frames`` headers in ``buf``; with ``reach_end``, only a chain that
    runs to the end of ``buf`` or stops at a frame header or tag cut short counts."""
    at = buf.find(b"\xff")
    while at >= 0:
        frames, last, stop, first = _walk(buf, at, stream)
        ends = not reach_end or stop >= len(buf) or _partial_tail(buf[stop:])
        if first is not None and frames >= min_frames and ends:
            return last, stop, first
        at = buf.find(b"\xff", at + 1)
    raise LookupError


def check_mp3(read: Read, size: int) -> Verdict:
    start = 0
    head = read(0, 10)
    if head[:3] == b"ID3":
        if len(head) < 10:
            return Incomplete("cut inside the ID3v2 tag's header", present=size, cut_offset=0)
        if any(b & 0x80 for b in head[6:10]):
            return Unknown("the ID3v2 tag's size is not syncsafe")
        tag = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        start = 10 + tag + (10 if head[5] & 0x10 else 0)
        if start > size:
            return Incomplete("cut inside the ID3v2 tag", present=size, declared=start)
    end = _tags_end(read, size)
    if end <= start:
        return Incomplete("no MPEG frame after the ID3v2 tag", present=size, cut_offset=start)
    whole = end - start <= HEAD_BYTES + TAIL_BYTES
    buf = read(start, end - start if whole else HEAD_BYTES)
    try:
        last, stop, first = _chain_in(buf, None, reach_end=whole, min_frames=1 if whole else MIN_CHAIN)
    except LookupError:
        if len(buf) < 4 and _partial_tail(buf):
            return Incomplete("cut inside the first frame header", present=size, cut_offset=start)
        return Unknown("no chain of MPEG frame headers" + (" running to the end" if whole else ""))
    base = start
    if not whole:  # pick the chain up again in the last window
        base = end - TAIL_BYTES
        buf = read(base, TAIL_BYTES)
        try:
            last, stop, _ = _chain_in(buf, first.stream, reach_end=True, min_frames=MIN_CHAIN)
        except LookupError:
            return Unknown("no chain of MPEG frame headers running to the end of the file")
    info = StreamInfo(f"mp{first.layer}", first.sample_rate, first.channels)
    if stop == len(buf):
        return Complete(info)
    if stop > len(buf):
        needs, has = stop - last, len(buf) - last
        return Incomplete(
            f"the last frame needs {needs} bytes, {has} are present",
            present=size,
            declared=size + stop - len(buf),
            cut_offset=base + last,
        )
    return Incomplete("cut inside a frame header or a tag after the last frame", present=size, cut_offset=base + stop)
