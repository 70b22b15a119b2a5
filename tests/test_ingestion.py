"""Every input a folder can hold ends where the table says: done/, failed/ with a reason, or ignored.

One real daemon takes the whole table at once (it is the cases together that must not stop it),
then a new pair dropped after all of them must still reach done/.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import TENANT, Spool, drop, running, wait_for
from ingest_support import captured_log, make_socket, put, put_atomic, sidecar, wav_bytes, write_settings

from vocwatch.core.pairing import printable
from vocwatch.core.states import Row, State
from vocwatch.edges.clock import SystemClock
from vocwatch.edges.ledger import Ledger
from vocwatch.testing.samples import write_mp3
from vocwatch.testing.simulator import SimState, Simulator

Maker = Callable[[Path, Path], bytes | None]


def mp3_bytes(outside: Path, freq: float) -> bytes:
    return write_mp3(outside / f"tone-{freq}.mp3", 0.25, freq).read_bytes()


def pair(name: str, audio: bytes, side: bytes, side_name: str | None = None) -> Maker:
    def make(inbox: Path, outside: Path) -> bytes:
        put(inbox / name, audio)
        put(inbox / (side_name or str(PurePosixPath(name).with_suffix(".json"))), side)
        return audio

    return make


def with_sidecar(name: str, make_audio: Callable[[Path, Path], bytes | None], rid: str) -> Maker:
    def make(inbox: Path, outside: Path) -> bytes | None:
        data = make_audio(inbox / name, outside)
        put(inbox / PurePosixPath(name).with_suffix(".json"), sidecar(rid))
        return data

    return make


def files(*names: str, data: bytes = b"RIFF....WAVEfmt ") -> Maker:
    def make(inbox: Path, outside: Path) -> None:
        for name in names:
            put(inbox / name, data)

    return make


def atomic_pair(inbox: Path, outside: Path) -> bytes:
    audio = wav_bytes(505)
    put_atomic(inbox / "c05.wav", audio, ".c05.wav.tmp")
    put_atomic(inbox / "c05.json", sidecar("c05"), "c05.json.part")
    return audio


def symlink_out(path: Path, outside: Path) -> bytes:
    secret = wav_bytes(537)
    put(outside / "secret.wav", secret)
    path.symlink_to(outside / "secret.wav")
    return secret


def symlinked_sidecar(inbox: Path, outside: Path) -> bytes:
    audio = wav_bytes(538)
    put(inbox / "c38.wav", audio)
    put(outside / "c38.json", sidecar("c38"))
    (inbox / "c38.json").symlink_to(outside / "c38.json")
    return audio


def fifo_sidecar(inbox: Path, outside: Path) -> bytes:
    audio = wav_bytes(548)
    put(inbox / "c48.wav", audio)
    os.mkfifo(inbox / "c48.json")
    return audio


def ambiguous(inbox: Path, outside: Path) -> None:
    put(inbox / "c43.mp3", mp3_bytes(outside, 543))
    put(inbox / "c43.wav", wav_bytes(543))
    put(inbox / "c43.json", sidecar("c43"))


def mp3_with_id3(inbox: Path, outside: Path) -> bytes:
    audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + mp3_bytes(outside, 512)
    put(inbox / "c12.mp3", audio)
    put(inbox / "c12.json", sidecar("c12"))
    return audio


@dataclass(frozen=True)
class Case:
    id: str
    make: Maker  # creates the input; returns the recording's bytes when they could be uploaded
    expect: str  # "done", "ignored", or the reason in NAME.error.json
    key: str  # the file whose fate is checked, relative to the inbox
    later: Callable[[Path, Path], None] | None = None  # what the producer drops after a pause
    rid: str | None = None  # the recording id expected at the API, for "done"


BAD = os.fsdecode(b"c44-caf\xe9")
BAD_DIR = os.fsdecode(b"d\xff")
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 100

CASES = [
    # -- taken ----------------------------------------------------------------------------
    Case("wav_with_json_sidecar", pair("c01.wav", wav_bytes(401), sidecar("c01")), "done", "c01.wav", rid="c01"),
    Case(
        "mp3_with_audio_named_sidecar",
        lambda i, o: pair("c02.mp3", mp3_bytes(o, 402), sidecar("c02"), "c02.mp3.json")(i, o),
        "done",
        "c02.mp3",
        rid="c02",
    ),
    Case(
        "sidecar_before_the_recording",
        lambda i, o: put(i / "c03.json", sidecar("c03")),
        "done",
        "c03.wav",
        later=lambda i, o: put(i / "c03.wav", wav_bytes(403)),
        rid="c03",
    ),
    Case(
        "sidecar_after_the_recording",
        lambda i, o: put(i / "c04.wav", wav_bytes(404)),
        "done",
        "c04.wav",
        later=lambda i, o: put(i / "c04.json", sidecar("c04")),
        rid="c04",
    ),
    Case("atomic_drop_by_rename", atomic_pair, "done", "c05.wav", rid="c05"),
    Case("sidecar_with_utf8_bom", pair("c06.wav", wav_bytes(406), codecs.BOM_UTF8 + sidecar("c06")), "done", "c06.wav"),
    Case(
        "name_with_spaces",
        pair("c07 with  spaces .wav", wav_bytes(407), sidecar("c07")),
        "done",
        "c07 with  spaces .wav",
    ),
    Case("unicode_name", pair("c08 Zoë – ☎ 通話.wav", wav_bytes(408), sidecar("c08")), "done", "c08 Zoë – ☎ 通話.wav"),
    Case("newline_in_name", pair("c09\nline.wav", wav_bytes(409), sidecar("c09")), "done", "c09\nline.wav", rid="c09"),
    Case("id_of_255_chars", pair("c10.wav", wav_bytes(410), sidecar("c" * 255)), "done", "c10.wav", rid="c" * 255),
    Case("upper_case_extensions", pair("C11.WAV", wav_bytes(411), sidecar("C11"), "C11.JSON"), "done", "C11.WAV"),
    Case("mp3_with_id3_tag", mp3_with_id3, "done", "c12.mp3", rid="c12"),
    Case("date_folder", pair("2026/11/25/c14.wav", wav_bytes(414), sidecar("c14")), "done", "2026/11/25/c14.wav"),
    # -- failed/, each with its reason ----------------------------------------------------
    Case("not_audio", pair("c20.txt", b"minutes of the call", sidecar("c20")), "unsupported_format", "c20.txt"),
    Case(
        "mp3_bytes_named_wav",
        lambda i, o: pair("c21.wav", mp3_bytes(o, 421), sidecar("c21"))(i, o),
        "content_mismatch",
        "c21.wav",
    ),
    Case("text_named_mp3", pair("c22.mp3", b"this is not audio at all", sidecar("c22")), "content_mismatch", "c22.mp3"),
    Case("empty_recording", pair("c23.wav", b"", sidecar("c23")), "empty_file", "c23.wav"),
    Case("over_max_bytes", pair("c24.wav", wav_bytes(424, 150_000), sidecar("c24")), "too_large", "c24.wav"),
    Case("sidecar_broken_json", pair("c25.wav", wav_bytes(425), b'{"id": "c25",'), "sidecar_not_json", "c25.wav"),
    Case(
        "sidecar_not_utf8",
        pair("c26.wav", wav_bytes(426), b'{"id": "c26", "who": "Zo\xeb"}'),
        "sidecar_not_json",
        "c26.wav",
    ),
    Case("sidecar_array", pair("c27.wav", wav_bytes(427), b'[{"id": "c27"}]'), "sidecar_not_object", "c27.wav"),
    Case(
        "sidecar_over_64_kib",
        pair("c28.wav", wav_bytes(428), sidecar("c28", pad="x" * 70_000)),
        "sidecar_too_large",
        "c28.wav",
    ),
    Case("sidecar_without_id", pair("c29.wav", wav_bytes(429), b'{"kind": "phonecall"}'), "missing_id", "c29.wav"),
    Case("numeric_id", pair("c30.wav", wav_bytes(430), sidecar(30)), "missing_id", "c30.wav"),
    Case("id_with_space", pair("c31.wav", wav_bytes(431), sidecar("c 31")), "invalid_id", "c31.wav"),
    Case("id_dotdot", pair("c32.wav", wav_bytes(432), sidecar("..")), "invalid_id", "c32.wav"),
    Case("id_of_256_chars", pair("c33.wav", wav_bytes(433), sidecar("c" * 256)), "invalid_id", "c33.wav"),
    Case(
        "sidecar_with_nan",
        pair("c34.wav", wav_bytes(434), b'{"id": "c34", "score": NaN}'),
        "sidecar_not_json",
        "c34.wav",
    ),
    Case(
        "sidecar_nested_too_deeply",
        pair("c35.wav", wav_bytes(435), b'{"id": "c35", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
        "sidecar_not_json",
        "c35.wav",
    ),
    Case(
        "sidecar_lone_surrogate",
        pair("c36.wav", wav_bytes(436), b'{"id": "c36", "x": "\\ud800"}'),
        "sidecar_not_json",
        "c36.wav",
    ),
    Case("recording_symlinked_outside", with_sidecar("c37.wav", symlink_out, "c37"), "not_regular_file", "c37.wav"),
    Case("sidecar_symlinked_outside", symlinked_sidecar, "not_regular_file", "c38.wav"),
    Case(
        "recording_is_a_fifo", with_sidecar("c39.wav", lambda p, o: os.mkfifo(p), "c39"), "not_regular_file", "c39.wav"
    ),
    Case(
        "recording_is_a_socket",
        with_sidecar("c40.wav", lambda p, o: make_socket(p), "c40"),
        "not_regular_file",
        "c40.wav",
    ),
    Case("sidecar_is_a_fifo", fifo_sidecar, "not_regular_file", "c48.wav"),
    Case("lone_fifo_named_like_a_recording", lambda i, o: os.mkfifo(i / "c49.wav"), "missing_sidecar", "c49.wav"),
    Case(
        "symlink_to_etc_shadow",
        with_sidecar("c47.wav", lambda p, o: p.symlink_to("/etc/shadow"), "c47"),
        "not_regular_file",
        "c47.wav",
    ),
    Case("sidecar_never_comes", lambda i, o: put(i / "c41.wav", wav_bytes(441)), "missing_sidecar", "c41.wav"),
    Case("recording_never_comes", lambda i, o: put(i / "c42.json", sidecar("c42")), "missing_recording", "c42.json"),
    Case("sidecar_fits_two_recordings", ambiguous, "ambiguous_sidecar", "c43.mp3"),
    Case("name_not_utf8", pair(BAD + ".wav", wav_bytes(444), sidecar("c44")), "invalid_name", BAD + ".wav"),
    Case(
        "folder_not_utf8",
        pair(BAD_DIR + "/c45.wav", wav_bytes(445), sidecar("c45")),
        "invalid_name",
        BAD_DIR + "/c45.wav",
    ),
    Case("failure_in_date_folder", pair("2026/11/26/c46.wav", b"", sidecar("c46")), "empty_file", "2026/11/26/c46.wav"),
    # -- ignored: never opened, never moved -----------------------------------------------
    Case("dotfiles", files(".c60.wav", ".c60.json"), "ignored", ".c60.wav"),
    Case("tmp_suffix", files("c61.wav.tmp", "c61.json.tmp"), "ignored", "c61.wav.tmp"),
    Case("part_suffix", files("c62.wav.part"), "ignored", "c62.wav.part"),
    Case("partial_suffix", files("c63.wav.partial"), "ignored", "c63.wav.partial"),
    Case("editor_backup", files("c64.wav~"), "ignored", "c64.wav~"),
    Case("swap_file", files("c65.wav.swp"), "ignored", "c65.wav.swp"),
    Case("folder_named_like_a_recording", lambda i, o: (i / "c66.wav").mkdir(), "ignored", "c66.wav"),
    Case("unrelated_file", files("c67.txt", data=b"notes"), "ignored", "c67.txt"),
    Case(
        "hidden_staging_folder", files(".staging/c68.wav", ".staging/c68.json", data=WAV), "ignored", ".staging/c68.wav"
    ),
]


@dataclass
class Fate:
    where: str  # done, failed, inbox, nowhere
    reason: str | None = None
    error: dict[str, Any] | None = None
    uploads: list[Any] | None = None  # what the API received with these bytes


@dataclass
class TableRun:
    fates: dict[str, Fate]
    probe_done: bool
    log: list[dict[str, Any]]
    spool: Spool
    rows: list[Row]


def fate_of(case: Case, spool: Spool, received: list[Any], sent: bytes | None) -> Fate:
    rel = PurePosixPath(case.key)
    error_file = spool.failed / rel.parent / (PurePosixPath(rel.name).stem + ".error.json")
    uploads = [r for r in received if sent is not None and r.sha256 == hashlib.sha256(sent).hexdigest()]
    if os.path.lexists(spool.done / rel):
        return Fate("done", uploads=uploads)
    if error_file.exists():
        error = json.loads(error_file.read_bytes().decode("utf-8"))  # strict: it must be valid UTF-8 JSON
        return Fate("failed", error["reason"], error, uploads)
    return Fate("inbox" if os.path.lexists(spool.inbox / rel) else "nowhere", uploads=uploads)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TableRun]:
    root = tmp_path_factory.mktemp("table")
    spool, outside = Spool(root), root / "outside"
    spool.inbox.mkdir(parents=True)
    outside.mkdir()
    key = "test-" + secrets.token_urlsafe(16)
    with pytest.MonkeyPatch.context() as env, captured_log() as log:
        env.setenv("VOCWATCH_API_KEY", key)
        for var in ("CRESCENDO_API_KEY", "CREDENTIALS_DIRECTORY", "VOCWATCH_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.delenv(var, raising=False)
        sim = Simulator(SimState(api_key=key, tenant=TENANT, seed=7)).start()
        try:
            settings = write_settings(
                spool,
                sim.url,
                root / "config.toml",
                upload__max_bytes=100_000,
                watch__rescan_seconds=1,
                watch__pair_timeout_seconds=3,
            )
            with running(settings) as daemon:
                sent = {case.id: case.make(spool.inbox, outside) for case in CASES}
                threading.Event().wait(0.8)  # the producers of the "later" files pause, then go on
                for case in CASES:
                    if case.later is not None:
                        case.later(spool.inbox, outside)
                        sent[case.id] = (spool.inbox / case.key).read_bytes()

                def all_settled() -> bool:
                    fates = [fate_of(c, spool, [], None).where for c in CASES if c.expect != "ignored"]
                    return all(where in ("done", "failed") for where in fates)

                settled = _try_wait(all_settled, 30, "every case in done/ or failed/")
                drop(spool.inbox, "zz-probe.wav", "zz-probe")
                probe = _try_wait(lambda: (spool.done / "zz-probe.wav").exists(), 15, "the probe in done/")
                scans = daemon.planner.scans
                _try_wait(lambda: daemon.planner.scans >= scans + 2, 10, "two more rescans")
            received = list(sim.state.received)
            fates = {c.id: fate_of(c, spool, received, sent[c.id]) for c in CASES}
            ledger = Ledger(spool.ledger_path, SystemClock(), holder="reader")
            try:
                rows = list(ledger.iter_all())
            finally:
                ledger.close()
            yield TableRun(fates, settled and probe, log(), spool, rows)
        finally:
            sim.stop()


def _try_wait(condition: Callable[[], Any], timeout: float, what: str) -> bool:
    """Wait, but let each case report its own fate rather than failing the whole table here."""
    try:
        wait_for(condition, timeout=timeout, what=what)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_input_lands_where_the_table_says(table_run: TableRun, case: Case) -> None:
    fate = table_run.fates[case.id]
    if case.expect == "done":
        assert fate.where == "done", fate
        assert fate.uploads is not None and len(fate.uploads) == 1, "uploaded exactly once, with exactly its bytes"
        if case.rid is not None:
            assert fate.uploads[0].metadata["id"] == case.rid
    elif case.expect == "ignored":
        assert fate.where == "inbox", fate
        assert not fate.uploads
    else:
        assert (fate.where, fate.reason) == ("failed", case.expect), fate
        assert not fate.uploads, "a refused recording is never sent"
        assert fate.error is not None and fate.error["message"] and fate.error["explanation"]
        assert os.path.lexists(table_run.spool.failed / case.key), "the file itself is kept in failed/"
        # Failures decided before a claim too (a lone half, a name that cannot be claimed): a row says so.
        mine = [r for r in table_run.rows if r.destination == printable(str(table_run.spool.failed / case.key))]
        assert [(r.state, (r.last_error or "").partition(":")[0]) for r in mine] == [(State.FAILED, case.expect)]
    assert table_run.probe_done, "a pair dropped after all the cases still reaches done/"


def test_the_table_run_logged_no_crash(table_run: TableRun) -> None:
    crashes = [line for line in table_run.log if line.get("level") in ("error", "critical") or "exception" in line]
    assert crashes == []


def test_a_symlinked_file_outside_the_inbox_is_left_alone(table_run: TableRun) -> None:
    secret = table_run.spool.root / "outside" / "secret.wav"
    assert secret.read_bytes() == wav_bytes(537)
    assert (table_run.spool.failed / "c37.wav").is_symlink()
