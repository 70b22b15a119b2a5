"""The pure pairing rules: when a file is complete, what pairs with what, and what expires why."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vocwatch.core.model import Pair
from vocwatch.core.pairing import (
    AUDIO_EXTENSIONS,
    Entry,
    Rules,
    classify,
    group_key,
    handle_event,
    held,
    ignore_pattern,
    is_ignored,
    is_text,
    observe,
    plan,
    printable,
)
from vocwatch.edges.config import DEFAULT_IGNORE

RULES = Rules(settle_s=2.0, pair_timeout_s=60.0)
LONE_OK = Rules(settle_s=2.0, pair_timeout_s=60.0, require_sidecar=False)


def entry(
    name: str,
    stable: float = 0.0,
    *,
    complete_at: float | None = None,
    seen: float | None = None,
    size: int = 100,
    held_until: float | None = None,
) -> Entry:
    """A file seen at ``seen`` (default: when it became stable) and unchanged since ``stable``."""
    first = seen if seen is not None else stable
    return Entry(PurePosixPath(name), size, 1, first, stable, ino=7, complete_at=complete_at, held_until=held_until)


@dataclass(frozen=True)
class Expect:
    ready: list[tuple[str, str | None]] = field(default_factory=list)
    expired: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    waiting_until: float | None = None


def decide(entries: list[Entry], now: float, rules: Rules = RULES) -> Expect:
    decided = plan(entries, now, rules)
    return Expect(
        ready=sorted((str(p.audio), str(p.sidecar) if p.sidecar else None) for p in decided.ready),
        expired=sorted((tuple(str(f) for f in e.files), e.problem.code) for e in decided.expired),
        waiting_until=decided.next_check,
    )


PLAN_TABLE = [
    ("pair_waits_until_both_settle", [entry("a.wav"), entry("a.json")], 1.9, RULES, Expect(waiting_until=2.0)),
    ("pair_is_ready_once_both_settled", [entry("a.wav"), entry("a.json")], 2.0, RULES, Expect([("a.wav", "a.json")])),
    ("newest_member_decides", [entry("a.wav"), entry("a.json", 1.5)], 2.0, RULES, Expect(waiting_until=3.5)),
    ("audio_named_sidecar_pairs", [entry("a.mp3"), entry("a.mp3.json")], 2, RULES, Expect([("a.mp3", "a.mp3.json")])),
    ("extensions_are_case_blind", [entry("A.WAV"), entry("A.JSON")], 2, RULES, Expect([("A.WAV", "A.JSON")])),
    ("exact_form_is_case_blind", [entry("a.Mp3"), entry("a.mp3.Json")], 2, RULES, Expect([("a.Mp3", "a.mp3.Json")])),
    (
        "exact_sidecar_wins_over_stem_sidecar",
        [entry("a.wav"), entry("a.wav.json"), entry("a.json")],
        2.0,
        RULES,
        Expect([("a.wav", "a.wav.json")], waiting_until=62.0),
    ),
    (
        "stem_sidecar_takes_the_recording_left_over",
        [entry("a.mp3"), entry("a.mp3.json"), entry("a.wav"), entry("a.json")],
        2.0,
        RULES,
        Expect([("a.mp3", "a.mp3.json"), ("a.wav", "a.json")]),
    ),
    (
        "stem_sidecar_with_two_recordings_is_ambiguous",
        [entry("a.mp3"), entry("a.wav"), entry("a.json")],
        2.0,
        RULES,
        Expect(expired=[(("a.mp3", "a.wav", "a.json"), "ambiguous_sidecar")]),
    ),
    (
        "ambiguity_waits_until_files_are_complete",
        [entry("a.mp3"), entry("a.wav", 1.0), entry("a.json")],
        2.0,
        RULES,
        Expect(waiting_until=3.0),
    ),
    ("lone_recording_waits_for_its_sidecar", [entry("a.wav")], 61.9, RULES, Expect(waiting_until=62.0)),
    ("lone_recording_expires", [entry("a.wav")], 62.0, RULES, Expect(expired=[(("a.wav",), "missing_sidecar")])),
    ("lone_sidecar_expires", [entry("a.json")], 62.0, RULES, Expect(expired=[(("a.json",), "missing_recording")])),
    (
        "timeout_counts_from_completeness_not_first_sight",
        [entry("long.wav", 100.0, seen=0.0)],
        120.0,
        RULES,
        Expect(waiting_until=162.0),
    ),
    ("lone_recording_taken_without_sidecar_rule", [entry("a.wav")], 2.0, LONE_OK, Expect([("a.wav", None)])),
    (
        "sidecar_still_written_is_waited_for_even_without_sidecar_rule",
        [entry("a.wav"), entry("a.json", 1.9)],
        2.0,
        LONE_OK,
        Expect(waiting_until=3.9),
    ),
    ("lone_other_file_is_none_of_our_business", [entry("notes.txt")], 99.0, RULES, Expect()),
    ("lone_other_file_stays_even_without_sidecar_rule", [entry("notes.txt")], 99.0, LONE_OK, Expect()),
    (
        "other_file_with_sidecar_pairs_to_fail",
        [entry("a.txt"), entry("a.json")],
        2,
        RULES,
        Expect([("a.txt", "a.json")]),
    ),
    (
        "renamed_recording_waits_for_a_partner_still_settling",
        [entry("a.wav", complete_at=0.5), entry("a.json")],
        0.5,
        RULES,
        Expect(waiting_until=2.0),
    ),
    # Rule 3: a file the last look found held open waits for the next look, whatever its age.
    (
        "held_file_waits_for_the_next_look",
        [entry("a.wav", held_until=10.5), entry("a.json")],
        10.0,
        RULES,
        Expect(waiting_until=10.5),
    ),
    (
        "held_renamed_file_waits_too",
        [entry("a.wav", complete_at=0.0, held_until=0.5), entry("a.json", complete_at=0.0)],
        0.2,
        RULES,
        Expect(waiting_until=0.5),
    ),
    (
        "hold_whose_look_expired_is_looked_at_again",
        [entry("a.wav", held_until=9.0), entry("a.json")],
        9.0,
        RULES,
        Expect([("a.wav", "a.json")]),
    ),
    (
        "held_unchanged_past_the_timeout_fails_as_still_open",
        [entry("a.wav", held_until=62.5), entry("a.json")],
        62.0,
        RULES,
        Expect(expired=[(("a.wav", "a.json"), "still_open")]),
    ),
    (
        "held_lone_recording_fails_as_still_open_without_sidecar_rule",
        [entry("a.wav", held_until=62.5)],
        62.0,
        LONE_OK,
        Expect(expired=[(("a.wav",), "still_open")]),
    ),
    # Rule 4: an empty recording is never refused at once.
    ("empty_recording_waits", [entry("a.wav", size=0), entry("a.json")], 2.0, RULES, Expect(waiting_until=62.0)),
    (
        "empty_renamed_recording_waits",
        [entry("a.wav", size=0, complete_at=0.0), entry("a.json", complete_at=0.0)],
        2.0,
        RULES,
        Expect(waiting_until=60.0),
    ),
    (
        "still_empty_at_the_timeout_fails_as_empty_file",
        [entry("a.wav", size=0), entry("a.json")],
        62.0,
        RULES,
        Expect(expired=[(("a.wav", "a.json"), "empty_file")]),
    ),
    (
        "empty_sidecar_is_for_validation_to_refuse",
        [entry("a.wav"), entry("a.json", size=0)],
        2.0,
        RULES,
        Expect([("a.wav", "a.json")]),
    ),
    (
        "renamed_files_are_complete_at_once",
        [entry("a.wav", 5.0, complete_at=5.0), entry("a.json", 5.0, complete_at=5.0)],
        5.0,
        RULES,
        Expect([("a.wav", "a.json")]),
    ),
    (
        "folders_keep_pairs_apart",
        [entry("d1/a.wav"), entry("d2/a.json")],
        62.0,
        RULES,
        Expect(expired=[(("d1/a.wav",), "missing_sidecar"), (("d2/a.json",), "missing_recording")]),
    ),
    (
        "undecodable_name_fails_once_complete",
        [entry("caf\udce9.wav"), entry("caf\udce9.json")],
        2.0,
        RULES,
        Expect(expired=[(("caf\udce9.wav", "caf\udce9.json"), "invalid_name")]),
    ),
    ("undecodable_name_waits_while_written", [entry("caf\udce9.wav", 1.0)], 2.0, RULES, Expect(waiting_until=3.0)),
    (
        "undecodable_folder_fails",
        [entry("d\udcff/a.wav")],
        2.0,
        RULES,
        Expect(expired=[(("d\udcff/a.wav",), "invalid_name")]),
    ),
    ("undecodable_other_file_is_none_of_our_business", [entry("x\udcff.txt")], 99.0, RULES, Expect()),
]


@pytest.mark.parametrize(
    ("entries", "now", "rules", "expected"), [c[1:] for c in PLAN_TABLE], ids=[c[0] for c in PLAN_TABLE]
)
def test_plan_decides_ready_waiting_and_expired(
    entries: list[Entry], now: float, rules: Rules, expected: Expect
) -> None:
    assert decide(entries, now, rules) == expected


def test_unchanged_observation_keeps_the_entry_and_its_settle_clock() -> None:
    first = observe(None, PurePosixPath("a.wav"), 10, 1, 0.0, ino=3, ctime_ns=4)
    assert observe(first, first.rel, 10, 1, 5.0, ino=3, ctime_ns=4) is first


@pytest.mark.parametrize(
    ("size", "mtime_ns", "ino", "ctime_ns"),
    [(11, 1, 3, 4), (10, 2, 3, 4), (10, 1, 9, 4), (10, 1, 3, 5)],
    ids=["grown", "touched", "replaced_by_rename", "rewritten_with_mtime_restored"],
)
def test_any_change_restarts_the_settle_wait_and_voids_a_close(
    size: int, mtime_ns: int, ino: int, ctime_ns: int
) -> None:
    closed = observe(None, PurePosixPath("a.wav"), 10, 1, 0.0, ino=3, ctime_ns=4, complete_at=0.5)
    changed = observe(closed, closed.rel, size, mtime_ns, 7.0, ino=ino, ctime_ns=ctime_ns)
    assert changed.stable_since == 7.0
    assert changed.complete_at is None
    assert changed.settled_at(RULES) == 9.0


def test_a_close_no_longer_shortens_the_settle_wait() -> None:
    # Issue 9: a writer that closes, pauses and reopens to append is only caught by the settle wait.
    closed = handle_event(observe(None, PurePosixPath("a.wav"), 10, 1, 0.0), "closed")
    assert closed.settled_at(RULES) == 2.0
    assert decide([closed, entry("a.json")], 1.0) == Expect(waiting_until=2.0)


HANDLES_TABLE: list[tuple[str, tuple[str, ...], bool]] = [
    ("created_or_renamed_in", (), False),
    ("opened", ("opened",), True),
    ("opened_and_read", ("opened", "closed_no_write"), False),
    ("written", ("modified",), True),
    ("written_and_closed", ("opened", "modified", "closed"), False),
    # A reader's close-without-write never ends a write seen: merged opens may hide the writer's.
    ("written_then_read_by_another", ("opened", "modified", "opened", "closed_no_write"), True),
    ("closed_then_reopened", ("opened", "modified", "closed", "opened"), True),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in HANDLES_TABLE], ids=[c[0] for c in HANDLES_TABLE])
def test_events_tell_a_file_is_held_erring_towards_held(events: tuple[str, ...], expected: bool) -> None:
    e = observe(None, PurePosixPath("a.wav"), 10, 1, 0.0)
    for event in events:
        e = handle_event(e, event)  # type: ignore[arg-type]
    assert e.held_by_events is expected


def test_a_change_keeps_what_is_known_of_the_handles() -> None:
    e = handle_event(observe(None, PurePosixPath("a.wav"), 10, 1, 0.0), "modified")
    assert observe(e, e.rel, 11, 2, 1.0).held_by_events


def test_a_look_that_finds_no_writer_clears_what_events_said() -> None:
    e = held(handle_event(observe(None, PurePosixPath("a.wav"), 10, 1, 0.0), "modified"), 5.0)
    assert e.held(4.0) and not e.held(5.0)
    cleared = held(e, None)
    assert not cleared.held(4.0) and not cleared.held_by_events
    assert not handle_event(e, "closed").held(4.0)  # the writer's close ends the hold at once


CLASSIFY_TABLE = [
    ("call.wav", ("audio", "call")),
    ("call.MP3", ("audio", "call")),
    ("call.json", ("sidecar", "call")),
    ("call.mp3.json", ("sidecar", "call")),
    ("call.WAV.JSON", ("sidecar", "call")),
    ("call.txt.json", ("sidecar", "call.txt")),
    ("2026.11.25 call.wav", ("audio", "2026.11.25 call")),
    ("call.txt", ("other", "call")),
    ("README", ("other", "README")),
]


@pytest.mark.parametrize(("name", "expected"), CLASSIFY_TABLE, ids=[c[0] for c in CLASSIFY_TABLE])
def test_classify_names_kind_and_pair_key(name: str, expected: tuple[str, str]) -> None:
    assert classify(name) == expected


IGNORE_TABLE = [
    (".call.wav.tmp", True),
    (".call.wav", True),
    ("call.wav.tmp", True),
    ("call.wav.part", True),
    ("call.wav.partial", True),
    ("call.wav~", True),
    ("call.wav.swp", True),
    ("call.wav", False),
    ("call.tmp.wav", False),
    ("call.json", False),
    ("~call.wav", False),
]


@pytest.mark.parametrize(("name", "ignored"), IGNORE_TABLE, ids=[c[0] for c in IGNORE_TABLE])
def test_default_ignore_patterns(name: str, ignored: bool) -> None:
    assert is_ignored(name, DEFAULT_IGNORE) is ignored


# -- the string shortcuts agree with pathlib and fnmatch ------------------------------------------


def _pathlib_classify(name: str) -> tuple[str, str]:
    """classify as first written, with pathlib: the string version must answer the same."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    if suffix == ".json":
        inner = PurePosixPath(path.stem)
        if inner.suffix.lower() in AUDIO_EXTENSIONS:
            return "sidecar", inner.stem
        return "sidecar", path.stem
    if suffix in AUDIO_EXTENSIONS:
        return "audio", path.stem
    return "other", path.stem if suffix else name


_PIECES = st.sampled_from(["a", "B", ".", "..", " ", ".wav", ".WAV", ".mp3", ".json", ".Json", ".txt", "é", "\udcff"])
tricky_names = st.lists(_PIECES, min_size=1, max_size=6).map("".join)
file_names = tricky_names.filter(lambda n: n not in (".", ".."))
folders = st.sampled_from(["", "d/", "d/e/", "a.wav/"])


@settings(deadline=None)
@given(st.one_of(tricky_names, st.text()))
def test_classify_answers_as_pathlib_does(name: str) -> None:
    assert classify(name) == _pathlib_classify(name)


@settings(deadline=None)
@given(
    name=st.one_of(tricky_names, st.text()),
    patterns=st.one_of(
        st.lists(st.sampled_from([*DEFAULT_IGNORE, "*", "?.wav", "[ab]*", "[!a]*", "a*b*c"]), max_size=4),
        st.lists(st.text("*?[]!-ab.", max_size=6), max_size=4),
    ),
)
def test_one_compiled_ignore_pattern_answers_as_fnmatch_does(name: str, patterns: list[str]) -> None:
    assert (ignore_pattern(patterns).match(name) is not None) is is_ignored(name, patterns)


@settings(deadline=None)
@given(folder_a=folders, a=file_names, folder_b=folders, b=file_names)
def test_group_key_joins_files_of_one_folder_and_pair_key(folder_a: str, a: str, folder_b: str, b: str) -> None:
    rel_a, rel_b = PurePosixPath(folder_a + a), PurePosixPath(folder_b + b)
    same = (rel_a.parent, classify(a)[1]) == (rel_b.parent, classify(b)[1])
    assert (group_key(rel_a) == group_key(rel_b)) is same
    assert group_key(str(rel_a)) == group_key(rel_a)


# -- properties of the name rules -----------------------------------------------------------

_NAME_CHARS = st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))
stems = st.text(_NAME_CHARS, min_size=1, max_size=40).filter(
    lambda s: (
        not s.startswith(".")
        and not is_ignored(s + ".wav", DEFAULT_IGNORE)
        and PurePosixPath(s).name == s
        and PurePosixPath(s).suffix.lower() not in AUDIO_EXTENSIONS | {".json"}
    )
)
audio_exts = st.sampled_from([".wav", ".mp3", ".WAV", ".Mp3"])


@settings(deadline=None)
@given(stem=stems, ext=audio_exts, exact=st.booleans(), reverse=st.booleans())
def test_any_stem_pairs_with_either_sidecar_form(stem: str, ext: str, exact: bool, reverse: bool) -> None:
    audio, sidecar = stem + ext, stem + (ext if exact else "") + ".json"
    entries = [entry(audio), entry(sidecar)]
    decided = plan(entries[::-1] if reverse else entries, 2.0, RULES)
    assert decided.ready == [Pair(PurePosixPath(audio), PurePosixPath(sidecar))]
    assert not decided.expired and not decided.waiting


@settings(deadline=None)
@given(stem=stems, ext=audio_exts)
def test_a_recording_is_never_taken_before_it_settles(stem: str, ext: str) -> None:
    entries = [entry(stem + ext, 1.0), entry(stem + ".json")]
    decided = plan(entries, 2.9, RULES)
    assert decided.ready == [] and decided.next_check == 3.0


raw_names = st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\x00" not in b)


@settings(deadline=None)
@given(raw=raw_names, ext=audio_exts)
def test_names_from_any_bytes_are_planned_without_error_and_never_sent_unless_text(raw: bytes, ext: str) -> None:
    name = os.fsdecode(raw) + ext
    decided = plan([entry(name), entry(os.fsdecode(raw) + ".json")], 99.0, RULES)
    if is_text(name):
        assert decided.ready or decided.expired  # taken, or failed with a reason: never stuck
    else:
        assert decided.ready == []
        assert [e.problem.code for e in decided.expired] == ["invalid_name"]
    for expired in decided.expired:
        expired.problem.message.encode("utf-8")  # the error file can always be written


@settings(deadline=None)
@given(st.binary(max_size=60))
def test_printable_makes_any_file_name_valid_utf8_and_keeps_text(raw: bytes) -> None:
    name = os.fsdecode(raw)
    shown = printable(name)
    shown.encode("utf-8")
    if is_text(name):
        assert shown == name
    else:
        assert "\\x" in shown


@settings(deadline=None)
@given(st.text())
def test_printable_never_fails_on_any_string(text: str) -> None:
    printable(text).encode("utf-8")
