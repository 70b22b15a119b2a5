"""The simulator's reading of an upload: a streamed multipart/form-data body, validated as the contract says.

Only what the contract checks is kept (metadata's text, the audio part's name, type, size and sha256), so a
25 MB upload is never held in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from email.message import Message
from io import BufferedIOBase
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from vocwatch.edges.validate import check_recording_id


@dataclass
class Received:
    """One upload the simulator accepted: what it saw, for tests to compare."""

    job_id: str
    metadata: dict[str, Any]
    filename: str
    content_type: str
    size: int
    sha256: str
    idempotency_key: str | None


class TruncatedError(Exception):
    """The client sent fewer bytes than its Content-Length said (it went away mid-body)."""

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(f"request body ended after {got} of {expected} bytes")
        self.got, self.expected = got, expected


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name = ""
        self.filename = ""
        self.content_type = ""
        self.size = 0
        self.hasher = hashlib.sha256()
        self.text = bytearray()


def read_form(rfile: BufferedIOBase, headers: Message, length: int, max_bytes: int) -> dict[str, _Part] | str:
    """The parts of a multipart body of ``length`` bytes, or why it is a bad request (the body is then read
    to its end). TruncatedError if the body ends early: there is no one left to answer."""
    ctype, params = parse_options_header(headers.get("Content-Type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        discard(rfile, length)
        return "Content-Type must be multipart/form-data"
    if length > max_bytes + 1024 * 1024:
        discard(rfile, length)
        return f"File too large: at most {max_bytes} bytes"
    parts: dict[str, _Part] = {}
    current: list[_Part] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        current.append(_Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        current[-1].headers[header[0].decode("latin-1").lower()] = header[1]
        header[0], header[1] = b"", b""

    def headers_done() -> None:
        part = current[-1]
        _, disp = parse_options_header(part.headers.get("content-disposition", b""))
        part.name = disp.get(b"name", b"").decode(errors="replace")
        part.filename = disp.get(b"filename", b"").decode(errors="replace")
        part.content_type = part.headers.get("content-type", b"").decode(errors="replace")

    def data(chunk: bytes, start: int, end: int) -> None:
        part = current[-1]
        piece = chunk[start:end]
        part.size += len(piece)
        part.hasher.update(piece)
        if not part.filename and len(part.text) < 1024 * 1024:
            part.text += piece

    def end() -> None:
        parts[current[-1].name] = current[-1]

    callbacks: Any = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_headers_finished": headers_done,
        "on_part_data": data,
        "on_part_end": end,
    }
    parser = MultipartParser(params[b"boundary"], callbacks)
    remaining = length
    problem: str | None = None
    while remaining > 0:
        chunk = rfile.read(min(remaining, 1024 * 1024))
        if not chunk:
            raise TruncatedError(length - remaining, length)
        remaining -= len(chunk)
        if problem is None:
            try:
                parser.write(chunk)
            except (MultipartParseError, IndexError, ValueError) as exc:
                problem = f"the multipart body could not be parsed: {exc}"
    if problem is None:
        try:
            parser.finalize()
        except (MultipartParseError, IndexError, ValueError) as exc:
            problem = f"the multipart body could not be parsed: {exc}"
    return parts if problem is None else problem


def validate(parts: dict[str, _Part], max_bytes: int) -> Received | str:
    """What the contract requires of an upload: the Received, or the 400's message."""
    meta_part = parts.get("metadata")
    if meta_part is None:
        return "metadata is required"
    try:
        metadata = json.loads(bytes(meta_part.text).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "metadata must be a JSON string"
    if not isinstance(metadata, dict):
        return "metadata must be a JSON object"
    if check_recording_id(metadata.get("id")) is not None:
        return "metadata.id must contain only letters, numbers, dots, dashes, or underscores"
    audio = parts.get("audio") or parts.get("file")
    if audio is None or not audio.filename:
        return "audio file is required"
    ext = audio.filename.rsplit(".", 1)[-1].lower()
    if ext not in ("mp3", "wav"):
        return "Audio must be mp3 or wav"
    if audio.size > max_bytes:
        return f"File too large: at most {max_bytes} bytes"
    return Received("", metadata, audio.filename, audio.content_type, audio.size, audio.hasher.hexdigest(), None)


def discard(rfile: BufferedIOBase, length: int) -> None:
    """Read and drop ``length`` bytes of body. TruncatedError if the client went away first."""
    left = length
    while left > 0:
        chunk = rfile.read(min(left, 1024 * 1024))
        if not chunk:
            raise TruncatedError(length - left, length)
        left -= len(chunk)
