"""Names derived from a pair's names: suffixes, error files, temporary names, all within NAME_MAX bytes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path, PurePosixPath

from vocwatch.core.model import Pair

# A file name's limit in bytes on Linux filesystems: every name derived here (a ~1 suffix, NAME.error.json,
# a temp name) must fit, or the pair could never leave work/.
NAME_MAX = 255
NAME_HASH = 8  # hex digits of the stem's hash in a shortened stem
NAME_RESERVE = 32  # bytes a shortened stem leaves free: ~9999, .mp3.json or .error.json
ERROR_TAIL = ".error.json"


def _pair_names(target: Path, pair: Pair, n: int, with_error: bool = False) -> dict[str, Path]:
    """The names of the pair's recording, sidecar and error file at ``target``, collision number ``n``.

    All three share one stem, shortened for all when any of the names it must carry would not fit.
    """
    tail: str | None = None
    if pair.sidecar is not None:
        sidecar_name = pair.sidecar.name
        stem = PurePosixPath(pair.audio.name).stem
        tail = sidecar_name[len(stem) :] if sidecar_name.startswith(stem) else "." + sidecar_name
    companions = [t for t in (tail, ERROR_TAIL if with_error else None) if t is not None]
    audio = _with_suffix_n(target, n, *companions)
    names = {"audio": audio, "error": _error_name(audio)}
    if tail is not None:
        names["sidecar"] = audio.with_name(PurePosixPath(audio.name).stem + tail)
    return names


def _error_name(audio: Path) -> Path:
    """``call.wav`` -> ``call.error.json``, beside it in failed/."""
    return audio.with_name(PurePosixPath(audio.name).stem + ERROR_TAIL)


def _with_suffix_n(path: Path, n: int, *companions: str) -> Path:
    """``call.wav`` -> ``call.wav`` (n=0), ``call~1.wav`` (n=1): the collision-safe names.

    When the name, or its stem with any of ``companions`` (a sidecar's ``.json``, ``.error.json``), would
    exceed NAME_MAX bytes, the stem is shortened: ``call...-1a2b3c4d~1.wav`` (see _short_stem).
    """
    mark = f"~{n}" if n else ""
    stem, suffix = path.stem, path.suffix
    longest = max(_nbytes(mark + tail) for tail in (suffix, *companions))
    if _nbytes(stem) + longest > NAME_MAX:
        return path.with_name(_short_stem(stem) + mark + suffix)
    return path if n == 0 else path.with_name(stem + mark + suffix)


def _short_stem(stem: str) -> str:
    """``stem`` cut to NAME_MAX - NAME_RESERVE bytes (never inside a character) plus a hash of the whole stem:
    deterministic, and distinct for stems that share the cut. It leaves NAME_RESERVE bytes for what follows."""
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:NAME_HASH]
    room = NAME_MAX - NAME_RESERVE - NAME_HASH - 1
    cut, used = [], 0
    for char in stem:
        size = _nbytes(char)
        if used + size > room:
            break
        cut.append(char)
        used += size
    return "".join(cut) + "-" + digest


def _nbytes(name: str) -> int:
    """A name's length as the kernel counts it (NAME_MAX is bytes, not characters)."""
    return len(os.fsencode(name))


def _fitting_temp(path: Path, tag: str) -> Path:
    """``.NAME.tag`` beside ``path``, or a hash of the name in its place when that would not fit."""
    name = f".{path.name}.{tag}"
    if _nbytes(name) > NAME_MAX:
        name = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}.{tag}"
    return path.with_name(name)


def _suffix_of(destination: Path, target: Path, pair: Pair, with_error: bool) -> int:
    """The collision number ``n`` whose names put the recording at ``destination``."""
    if destination.name == target.name:
        return 0
    guess = destination.stem.rsplit("~", 1)[-1]
    candidates: list[int] = [int(guess)] if guess.isascii() and guess.isdigit() else []
    for n in candidates + list(range(10_000)):
        if _pair_names(target, pair, n, with_error)["audio"] == destination:
            return n
    raise FileExistsError(errno.EEXIST, "not a name planned for this pair; planning again", str(destination))
