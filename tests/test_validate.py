"""Checks before upload: the audio's format and size, the sidecar's JSON and id, regular files only."""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_support import make_socket

from vocwatch.core.model import Problem
from vocwatch.edges.client import metadata_json
from vocwatch.edges.validate import (
    build_metadata,
    check_audio,
    check_recording_id,
    fd_open_for_writing,
    has_cap_lease,
    lease_reach,
    open_for_writing,
    open_regular,
    parse_sidecar,
)

WAV_HEAD = b"RIFF\x24\x00\x00\x00WAVEfmt "
MP3_SYNC = b"\xff\xfb\x90\x64" + b"\x00" * 8

AUDIO_TABLE = [
    ("wav", "call.wav", 100, WAV_HEAD, None),
    ("rf64_wav", "call.wav", 100, b"RF64\xff\xff\xff\xffWAVEds64", None),
    ("mp3_frame_sync", "call.mp3", 100, MP3_SYNC, None),
    ("mp3_id3_tag", "call.mp3", 100, b"ID3\x04\x00\x00\x00\x00\x00\x00\x00\x00", None),
    ("extension_case_blind", "CALL.WAV", 100, WAV_HEAD, None),
    ("unsupported_extension", "call.ogg", 100, b"OggS" + b"\x00" * 8, "unsupported_format"),
    ("no_extension", "call", 100, WAV_HEAD, "unsupported_format"),
    ("empty", "call.wav", 0, b"", "empty_file"),
    ("at_the_limit", "call.wav", 1000, WAV_HEAD, None),
    ("over_the_limit", "call.wav", 1001, WAV_HEAD, "too_large"),
    ("mp3_bytes_named_wav", "call.wav", 100, MP3_SYNC, "content_mismatch"),
    ("wav_bytes_named_mp3", "call.mp3", 100, WAV_HEAD, "content_mismatch"),
    ("riff_but_not_wave", "call.wav", 100, b"RIFF\x24\x00\x00\x00AVI LIST", "content_mismatch"),
    ("text_named_mp3", "call.mp3", 100, b"hello, world", "content_mismatch"),
    ("one_byte_mp3", "call.mp3", 1, b"\xff", "content_mismatch"),
]


@pytest.mark.parametrize(
    ("name", "size", "head", "reason"), [c[1:] for c in AUDIO_TABLE], ids=[c[0] for c in AUDIO_TABLE]
)
def test_audio_extension_size_and_content_agree(name: str, size: int, head: bytes, reason: str | None) -> None:
    problem = check_audio(name, size, head, max_bytes=1000)
    assert (problem.code if problem else None) == reason


def _deep(levels: int) -> bytes:
    return b'{"id": "a", "x": ' + b"[" * levels + b"]" * levels + b"}"


SIDECAR_TABLE: list[tuple[str, bytes, str | None]] = [
    ("plain", b'{"id": "rec-1", "kind": "phonecall"}', None),
    ("utf8_bom_tolerated", codecs.BOM_UTF8 + b'{"id": "rec-1"}', None),
    ("unicode_values", '{"id": "rec-1", "agent": "Zoë 通話 ☎"}'.encode(), None),
    ("exactly_64_kib", b'{"id": "a", "pad": "' + b"x" * (65536 - 22) + b'"}', None),
    ("one_byte_over_64_kib", b'{"id": "a", "pad": "' + b"x" * (65536 - 21) + b'"}', "sidecar_too_large"),
    ("not_utf8", b'{"id": "rec-1", "agent": "Zo\xeb"}', "sidecar_not_json"),
    ("utf16", '{"id": "rec-1"}'.encode("utf-16"), "sidecar_not_json"),
    ("broken_json", b'{"id": "rec-1",', "sidecar_not_json"),
    ("empty_file", b"", "sidecar_not_json"),
    ("nan", b'{"id": "rec-1", "score": NaN}', "sidecar_not_json"),
    ("infinity", b'{"id": "rec-1", "score": -Infinity}', "sidecar_not_json"),
    ("lone_surrogate_value", b'{"id": "rec-1", "agent": "\\ud800"}', "sidecar_not_json"),
    ("lone_surrogate_key", b'{"id": "rec-1", "\\udcff": 1}', "sidecar_not_json"),
    ("nested_too_deeply", _deep(30_000), "sidecar_not_json"),
    ("array", b'[{"id": "rec-1"}]', "sidecar_not_object"),
    ("string", b'"rec-1"', "sidecar_not_object"),
    ("null", b"null", "sidecar_not_object"),
    ("no_id", b'{"kind": "phonecall"}', "missing_id"),
    ("numeric_id", b'{"id": 42}', "missing_id"),
    ("null_id", b'{"id": null}', "missing_id"),
    ("empty_id", b'{"id": ""}', "invalid_id"),
    ("dot_id", b'{"id": "."}', "invalid_id"),
    ("dotdot_id", b'{"id": ".."}', "invalid_id"),
    ("id_with_space", b'{"id": "rec 1"}', "invalid_id"),
    ("id_with_slash", b'{"id": "../etc/passwd"}', "invalid_id"),
    ("id_with_newline", b'{"id": "rec-1\\n"}', "invalid_id"),
    ("id_with_unicode_digit", '{"id": "rec-١"}'.encode(), "invalid_id"),
    ("id_255_chars", b'{"id": "' + b"a" * 255 + b'"}', None),
    ("id_256_chars", b'{"id": "' + b"a" * 256 + b'"}', "invalid_id"),
    ("id_dots_dashes_underscores", b'{"id": "a.b-c_D9"}', None),
]


@pytest.mark.parametrize(("raw", "reason"), [c[1:] for c in SIDECAR_TABLE], ids=[c[0] for c in SIDECAR_TABLE])
def test_sidecar_rules(raw: bytes, reason: str | None) -> None:
    parsed = parse_sidecar(raw)
    assert (parsed.code if isinstance(parsed, Problem) else None) == reason
    if isinstance(parsed, Problem):
        parsed.message.encode("utf-8")
    else:
        metadata_json(parsed).encode("utf-8")  # whatever is accepted can be sent


NUMBER_TABLE: list[tuple[str, bytes, str | None]] = [
    ("overflows_to_infinity", b"1e400", "sidecar_not_json"),
    ("overflows_to_minus_infinity", b"-1e400", "sidecar_not_json"),
    ("overflows_with_a_fraction", b"123456789.5e999", "sidecar_not_json"),
    ("overflows_deep_inside", b'{"a": [1, {"b": 1E+400}]}', "sidecar_not_json"),
    ("largest_finite_is_fine", b"1e308", None),
    ("tiny_underflows_to_zero_is_fine", b"1e-400", None),
    ("negative_zero_is_fine", b"-0.0", None),
    ("huge_integer_is_fine", b"1" + b"0" * 400, None),
    ("nan", b"NaN", "sidecar_not_json"),
    ("infinity", b"Infinity", "sidecar_not_json"),
    ("minus_infinity", b"-Infinity", "sidecar_not_json"),
]


@pytest.mark.parametrize(("number", "reason"), [c[1:] for c in NUMBER_TABLE], ids=[c[0] for c in NUMBER_TABLE])
def test_a_number_that_is_not_finite_once_parsed_is_refused_as_not_json(number: bytes, reason: str | None) -> None:
    parsed = parse_sidecar(b'{"id": "rec-1", "score": ' + number + b"}")
    assert (parsed.code if isinstance(parsed, Problem) else None) == reason
    if not isinstance(parsed, Problem):
        # What is accepted is sent as JSON that a strict parser (no NaN, no Infinity) reads back.
        json.loads(metadata_json(parsed), parse_constant=lambda name: pytest.fail(f"sent {name}"))


# -- properties of the metadata rules ----------------------------------------------------

ID_RULE = re.compile(r"[A-Za-z0-9._-]{1,255}")
valid_ids = st.from_regex(r"\A[A-Za-z0-9._-]{1,255}\Z").filter(lambda s: s not in {".", ".."})
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids))
defaults = st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers() | st.booleans(), max_size=5)


@settings(deadline=None)
@given(st.text(max_size=300))
def test_an_id_is_accepted_exactly_when_it_follows_the_rule(value: str) -> None:
    expected_ok = bool(ID_RULE.fullmatch(value)) and value not in {".", ".."}
    assert (check_recording_id(value) is None) == expected_ok


@settings(deadline=None)
@given(st.one_of(st.integers(), st.none(), st.lists(st.text()), st.floats(), st.booleans()))
def test_an_id_that_is_not_a_string_is_missing(value: Any) -> None:
    problem = check_recording_id(value)
    assert problem is not None and problem.code == "missing_id"


@settings(deadline=None)
@given(rid=valid_ids, extra=st.dictionaries(st.text(), json_values, max_size=5), bom=st.booleans())
def test_any_json_object_with_a_valid_id_is_read_back_as_written(rid: str, extra: dict[str, Any], bom: bool) -> None:
    body = {**extra, "id": rid}
    raw = json.dumps(body).encode()
    parsed = parse_sidecar((codecs.BOM_UTF8 if bom else b"") + raw)
    if len(raw) + 3 * bom > 65536:
        assert isinstance(parsed, Problem) and parsed.code == "sidecar_too_large"
        return
    assert parsed == body
    assert json.loads(metadata_json(parsed).encode("utf-8")) == body


@settings(deadline=None)
@given(rid=valid_ids, sidecar=st.dictionaries(st.text(max_size=8), json_values, max_size=5), defs=defaults)
def test_defaults_fill_in_but_never_override_the_sidecar(
    rid: str, sidecar: dict[str, Any], defs: dict[str, Any]
) -> None:
    own = {**sidecar, "id": rid}
    metadata = build_metadata(own, "ignored-stem", defs)
    assert isinstance(metadata, dict)
    assert {k: metadata[k] for k in own} == own
    assert {k: v for k, v in metadata.items() if k not in own} == {k: v for k, v in defs.items() if k not in own}


@settings(deadline=None)
@given(stem=st.text(max_size=60), defs=defaults)
def test_a_lone_recording_is_named_by_its_stem_which_must_be_a_valid_id(stem: str, defs: dict[str, Any]) -> None:
    metadata = build_metadata(None, stem, defs)
    if check_recording_id(stem) is None:
        assert isinstance(metadata, dict)
        assert metadata["id"] == stem
        assert {k: v for k, v in metadata.items() if k != "id"} == {k: v for k, v in defs.items() if k != "id"}
    else:
        assert isinstance(metadata, Problem) and metadata.code == "invalid_id"


# -- only regular files are opened ------------------------------------------------------


def _regular(path: Path, outside: Path) -> None:
    path.write_bytes(b"RIFF")


def _symlink_out(path: Path, outside: Path) -> None:
    secret = outside / "secret.wav"
    secret.write_bytes(b"RIFF secret")
    path.symlink_to(secret)


def _symlink_to_shadow(path: Path, outside: Path) -> None:
    path.symlink_to("/etc/shadow")


def _dangling(path: Path, outside: Path) -> None:
    path.symlink_to(outside / "nowhere.wav")


def _fifo(path: Path, outside: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path, outside: Path) -> None:
    make_socket(path)


def _directory(path: Path, outside: Path) -> None:
    path.mkdir()


OPEN_TABLE: list[tuple[str, Callable[[Path, Path], None], str | None]] = [
    ("regular_file", _regular, None),
    ("symlink_to_a_file_outside", _symlink_out, "not_regular_file"),
    ("symlink_to_etc_shadow", _symlink_to_shadow, "not_regular_file"),
    ("dangling_symlink", _dangling, "not_regular_file"),
    ("fifo", _fifo, "not_regular_file"),
    ("socket", _socket, "not_regular_file"),
    ("directory", _directory, "not_regular_file"),
    ("missing", lambda path, outside: None, "unreadable"),
]


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in OPEN_TABLE], ids=[c[0] for c in OPEN_TABLE])
def test_only_regular_files_are_opened_and_never_through_a_link(
    tmp_path: Path, make: Callable[[Path, Path], None], reason: str | None
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    path = inbox / "call.wav"
    make(path, outside)
    result: list[int | Problem] = []
    opener = threading.Thread(target=lambda: result.append(open_regular(path)), daemon=True)
    started = time.monotonic()
    opener.start()
    opener.join(timeout=5)
    assert result, "open_regular blocked (a FIFO must never block)"
    assert time.monotonic() - started < 5
    [opened] = result
    if isinstance(opened, int):
        os.close(opened)
    assert (opened.code if isinstance(opened, Problem) else None) == reason


WRITERS_TABLE: list[tuple[str, str | None, bool | None]] = [
    ("closed_file", None, False),
    ("open_for_reading", "rb", False),
    ("open_for_writing", "r+b", True),
    ("open_for_appending", "ab", True),
]


@pytest.mark.parametrize(("mode", "expected"), [c[1:] for c in WRITERS_TABLE], ids=[c[0] for c in WRITERS_TABLE])
def test_the_kernel_tells_whether_a_file_is_still_open_for_writing(
    tmp_path: Path, mode: str | None, expected: bool | None
) -> None:
    path = tmp_path / "call.wav"
    path.write_bytes(b"RIFF")
    handle = open(path, mode) if mode else None  # noqa: SIM115 - held open while the kernel is asked
    try:
        assert open_for_writing(path) is expected
    finally:
        if handle is not None:
            handle.close()
    assert open_for_writing(path) is False


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in OPEN_TABLE[1:]], ids=[c[0] for c in OPEN_TABLE[1:]])
def test_no_writer_answer_for_anything_but_a_regular_file(
    tmp_path: Path, make: Callable[[Path, Path], None], reason: str | None
) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "outside").mkdir()
    path = tmp_path / "inbox" / "call.wav"
    make(path, tmp_path / "outside")
    assert open_for_writing(path) is None


def test_the_probe_on_an_own_descriptor_tells_the_same(tmp_path: Path) -> None:
    # The pipeline asks on the descriptor it reads from, after the claim.
    path = tmp_path / "call.wav"
    path.write_bytes(b"RIFF")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fd_open_for_writing(fd) is False
        with open(path, "ab"):
            assert fd_open_for_writing(fd) is True
        # A writer opening while the probe holds its lease breaks it; the kernel then signals the
        # holder, and the default (SIGIO) would end the daemon. The probe asks for an ignored signal.
        assert fcntl.fcntl(fd, fcntl.F_GETSIG) == signal.SIGURG
    finally:
        os.close(fd)


def test_lease_reach_says_which_files_the_probe_can_answer_for(tmp_path: Path) -> None:
    assert lease_reach(tmp_path) == ("any" if has_cap_lease() else "own")
    assert list(tmp_path.iterdir()) == []  # its probe file is gone
    assert lease_reach(tmp_path / "missing") is None
