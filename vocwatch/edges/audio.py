"""A recording's structure and stream facts, read from a descriptor: headers only, by pread.

``core.audio`` decides from the bytes; this module gives it ``os.pread`` on a file opened safely
(``validate.open_regular``: no links, regular files only). mutagen supplies the duration, sample rate
and channels for the ledger; it reads tags and headers, not the audio. It is imported at its first use: a
whole WAV's own headers say it all, so a daemon that only ever sees WAVs never loads it (nor does start-up).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vocwatch.core.audio import Complete, Seen, Verdict, check, kind_of, wav_codec
from vocwatch.core.model import Problem
from vocwatch.core.reasons import Reason
from vocwatch.edges.validate import open_regular


def structure_of(fd: int, name: str) -> Verdict | None:
    """The structural verdict on the open recording ``fd`` (None: not a .wav or .mp3 name)."""
    kind = kind_of(name)
    if kind is None:
        return None
    size = os.fstat(fd).st_size
    return check(kind, lambda offset, count: os.pread(fd, count, offset), size)


def structure(path: Path) -> Verdict | Problem | None:
    """``structure_of`` for a path, opened with ``open_regular`` (a Problem: it cannot be opened safely)."""
    seen = structure_seen(path)
    return seen.verdict if isinstance(seen, Seen) else seen


def structure_seen(path: Path) -> Seen | Problem:
    """``structure`` with the signature of the file it was read from (what the worker checks it against)."""
    opened = open_regular(path)
    if isinstance(opened, Problem):
        return opened
    try:
        st = os.fstat(opened)
        return Seen((st.st_size, st.st_mtime_ns, st.st_ino), structure_of(opened, path.name))
    except OSError as exc:
        return Problem(Reason.UNREADABLE, f"{path.name} could not be read: {exc.strerror or exc}")
    finally:
        os.close(opened)


@dataclass(frozen=True, slots=True)
class AudioFacts:
    """The ledger's audio columns: None where neither mutagen nor the headers say."""

    duration_s: float | None
    codec: str | None
    sample_rate: int | None
    channels: int | None

    def columns(self) -> dict[str, float | int | str | None]:
        return {
            "duration_seconds": self.duration_s,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
        }


def facts(fh: IO[bytes], name: str, verdict: Verdict | None) -> AudioFacts:
    """Duration, codec, sample rate and channels of the open recording ``fh`` (its offset is restored)."""
    kind = kind_of(name)
    own = verdict.info if isinstance(verdict, Complete) else None
    if kind == "wav" and own is not None and None not in (own.sample_rate, own.channels, own.duration_s):
        # A whole WAV's own headers say all mutagen would (its length is the data chunk over the byte
        # rate, as mutagen counts it): no second parse of the file (about 60 us a file).
        return AudioFacts(round(float(own.duration_s or 0.0), 3) or None, own.codec, own.sample_rate, own.channels)
    import mutagen  # here, not at the top: only a recording that the headers do not fully describe needs it
    import mutagen.mp3
    import mutagen.wave

    at = fh.tell()
    try:
        fh.seek(0)
        info = (mutagen.wave.WAVE if kind == "wav" else mutagen.mp3.MP3)(fh).info if kind else None
    except (mutagen.MutagenError, OSError, ValueError, EOFError):
        info = None
    finally:
        fh.seek(at)
    length = getattr(info, "length", None) or (own.duration_s if own else None)
    bitrate = getattr(info, "bitrate", 0) or 0
    if length is not None and kind == "wav" and bitrate > 0:
        # mutagen counts the samples the data chunk declares: a cut file, or a streaming writer's 0xFFFFFFFF,
        # declares more than is there. No more audio than the file's bytes can hold.
        length = min(length, os.fstat(fh.fileno()).st_size * 8 / bitrate)
    if own is not None:
        codec: str | None = own.codec
    elif info is None:
        codec = None
    elif kind == "wav":
        codec = wav_codec(int(getattr(info, "audio_format", 0) or 0)) if getattr(info, "audio_format", None) else "wav"
    else:
        codec = f"mp{getattr(info, 'layer', 3)}"
    return AudioFacts(
        round(float(length), 3) if length else None,
        codec,
        int(getattr(info, "sample_rate", 0) or 0) or (own.sample_rate if own else None),
        int(getattr(info, "channels", 0) or 0) or (own.channels if own else None),
    )
