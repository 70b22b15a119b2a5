"""Pure pairing rules: which recordings and sidecars are ready, still waiting, or expired.

No I/O and no clock here: callers pass what they observed and ``now``.
"""

# When is a file complete? Only then may it be taken; the planner applies these rules.
#
# 1. Settled: its signature (size, mtime, inode, ctime) has not changed for ``watch.settle_seconds``.
#    This is the floor, for every file and on every filesystem: no file is taken sooner, however it
#    was closed. A writer that closes and reopens to append (issue 9) is only caught by it, so
#    settle_seconds must exceed the longest pause of a producer that closes between its writes.
# 2. Renamed into place from an ignored name (``.NAME.tmp``, ``NAME.part``, ...): settled at once,
#    as the rename is atomic and the ignored name hid the file while it was written. The only
#    exception to rule 1.
# 3. Not held open by a writer, whatever its size and age: a recorder buffers its output (ffmpeg,
#    sox, GStreamer: 32 KiB), so a low bit rate file stays unchanged, even at 0 bytes, for longer
#    than any settle wait while it is written. Just before claiming, the planner asks, in order:
#    a. the kernel, with a read lease (validate.open_for_writing): refused exactly while some
#       process has the file open for writing. Needs vocwatch to own the file or hold CAP_LEASE,
#       and a local filesystem; when it answers, its answer is the truth.
#    b. otherwise, inotify's events (``writing``, ``opened`` below): a write (IN_MODIFY) or an open
#       not yet followed by a close-after-write (IN_CLOSE_WRITE) means held; an open followed by a
#       close-without-write was a reader. inotify merges identical consecutive events (two writers'
#       opens or closes can arrive as one), so these err towards "held" and the lease is preferred.
#       A file found by a scan, or renamed in, has no opens seen: only (a) can tell for it.
#    c. neither (polling, as on NFS/SMB, and no lease): rule 1 alone; vocwatch check and the log
#       say so.
#    A file found held is looked at again ``HELD_RECHECK_S`` later or at its writer's close event;
#    held and unchanged for settle_seconds + watch.pair_timeout_seconds, it fails as ``still_open``.
# 4. Not empty: a 0-byte recording waits like any incomplete file (a buffering writer has not
#    flushed yet) and fails as ``empty_file`` only if still empty when its timeout ends.
# After claiming, the pipeline asks the kernel again on its own descriptor and compares the file's
# signature after hashing and after sending: a writer that appears then puts the pair back to wait.

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from vocwatch.core.model import Pair, Problem
from vocwatch.core.reasons import Reason

AUDIO_EXTENSIONS = frozenset({".mp3", ".wav"})
# A file found held open is looked at again this much later (or at its writer's close, if seen).
HELD_RECHECK_S = 1.0
Kind = Literal["audio", "sidecar", "other"]
# A relative, "/"-separated path. The planner keeps str: on a 100,000-pair backlog, PurePosixPaths
# cost ~35 MB more, and building them was most of the scan's time.
Rel = str | PurePosixPath
# A pair group: the path without its pair suffix (``sub/call`` for sub/call.wav and sub/call.mp3.json).
Key = str


@dataclass(frozen=True, slots=True)
class Entry:
    """One observed file: ``stable_since`` is when its signature was first seen unchanged, ``complete_at``
    when a rename from an ignored name (rule 2, ``renamed``) lets it count as settled while unchanged.

    ``writing`` and ``opened`` are what inotify told of its handles (rule 3b), ``held_until`` until when
    the last look found it held open by a writer (rule 3): it is not taken before then.
    """

    rel: Rel
    size: int
    mtime_ns: int
    first_seen: float
    stable_since: float
    ino: int = 0
    ctime_ns: int = 0
    complete_at: float | None = None
    renamed: bool = False
    writing: bool = False
    opened: bool = False
    held_until: float | None = None
    regular: bool = True  # a FIFO, socket or link named like a recording is for validation to refuse

    @property
    def signature(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ino, self.ctime_ns)

    def settled_at(self, rules: Rules) -> float:
        """When this file counts as settled (rules 1 and 2), if it does not change before then."""
        at = self.stable_since + rules.settle_s
        return at if self.complete_at is None else min(at, self.complete_at)

    def held(self, now: float) -> bool:
        """Did a look within the last ``HELD_RECHECK_S`` find a writer holding it open?"""
        return self.held_until is not None and self.held_until > now

    @property
    def held_by_events(self) -> bool:
        """Rule 3b: a write-open seen and not yet closed, or an open not yet closed at all."""
        return self.writing or self.opened


def observe(
    previous: Entry | None,
    rel: Rel,
    size: int,
    mtime_ns: int,
    now: float,
    *,
    ino: int = 0,
    ctime_ns: int = 0,
    complete_at: float | None = None,
    renamed: bool = False,
    regular: bool = True,
) -> Entry:
    """Fold a new observation of ``rel`` (and any proof that its writer finished) into what was known."""
    if previous is None:
        return Entry(rel, size, mtime_ns, now, now, ino, ctime_ns, complete_at, renamed, regular=regular)
    if previous.signature != (size, mtime_ns, ino, ctime_ns):
        # A change voids every earlier proof of completeness: the settle wait starts again. What is
        # known of its handles stays: a change does not close them.
        return replace(
            previous,
            size=size,
            mtime_ns=mtime_ns,
            ino=ino,
            ctime_ns=ctime_ns,
            stable_since=now,
            complete_at=complete_at,
            renamed=renamed,
            regular=regular,
        )
    if complete_at is None or (previous.complete_at is not None and previous.complete_at <= complete_at):
        return previous
    return replace(previous, complete_at=complete_at, renamed=renamed)


HandleEvent = Literal["opened", "modified", "closed", "closed_no_write"]


def handle_event(entry: Entry, event: HandleEvent) -> Entry:
    """Fold one of inotify's open, write and close events into what is known of the file's handles.

    Conservative, as identical consecutive events merge: a close-without-write ends only an open of
    unknown mode, never a write seen; a close-after-write ends both (and the last look's hold: the
    writer is gone, so the file is looked at again at once, once settled).
    """
    if event == "opened":
        changed = replace(entry, opened=True)
    elif event == "modified":
        changed = replace(entry, writing=True)
    elif event == "closed":
        changed = replace(entry, writing=False, opened=False, held_until=None)
    else:
        changed = replace(entry, opened=False)
    return entry if changed == entry else changed


def held(entry: Entry, until: float | None) -> Entry:
    """The last look found ``entry`` held open by a writer (``until``: when to look again), or not (None).
    A look that found no writer is the kernel's word: it also clears what events said.
    """
    if until is None:
        return replace(entry, held_until=None, writing=False, opened=False)
    return replace(entry, held_until=until)


def is_ignored(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def ignore_pattern(patterns: Iterable[str]) -> re.Pattern[str]:
    """``is_ignored`` as one compiled regex (``.match``): a scan asks it for every file."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def _split(name: str) -> tuple[str, str]:
    """``PurePosixPath(name).stem`` and ``.suffix`` of a plain file name, without building a path."""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], name[i:]
    return name, ""


def classify(name: str) -> tuple[Kind, str]:
    """The kind of a file name and its pair key: ``call.mp3`` and ``call.json`` share ``call``;
    ``call.mp3.json`` pairs with ``call.mp3`` only. Extensions match case-insensitively.
    """
    # Names are split as strings (pathlib's rules), only a name with a "/" goes through pathlib.
    stem, suffix = _split(name if "/" not in name else PurePosixPath(name).name)
    suffix = suffix.lower()
    if suffix == ".json":
        inner_stem, inner_suffix = _split(stem)
        if inner_suffix.lower() in AUDIO_EXTENSIONS:
            return "sidecar", inner_stem
        return "sidecar", stem
    if suffix in AUDIO_EXTENSIONS:
        return "audio", stem
    return "other", stem if suffix else name


def is_text(text: str) -> bool:
    """True when ``text`` is valid Unicode (a name decoded from bytes that were not UTF-8 is not)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` made valid UTF-8 for JSON, logs and the ledger: undecodable bytes become ``\\xNN``."""
    if is_text(text):
        return text
    return "".join(_escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


@dataclass(frozen=True, slots=True)
class Expired:
    """Files that can never form a pair, with the reason they go to failed/."""

    files: tuple[PurePosixPath, ...]
    problem: Problem


@dataclass(frozen=True, slots=True)
class Plan:
    ready: list[Pair] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    # Groups still waiting, each with the earliest time it could change state.
    waiting: dict[Key, float] = field(default_factory=dict)

    @property
    def next_check(self) -> float | None:
        return min(self.waiting.values()) if self.waiting else None


@dataclass(frozen=True, slots=True)
class Decided:
    """``plan``'s answer with each ready pair as (recording, sidecar or None) str paths."""

    ready: list[tuple[str, str | None]] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    waiting: dict[Key, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rules:
    settle_s: float
    pair_timeout_s: float
    require_sidecar: bool = True


def group_key(rel: Rel) -> Key:
    path = str(rel)
    cut = path.rfind("/") + 1
    return path[: cut + len(classify(path[cut:])[1])]  # the pair key is always a prefix of the name


def plan(entries: Sequence[Entry], now: float, rules: Rules) -> Plan:
    """Decide, for the entries of some pair groups, which pairs are ready, waiting or expired."""
    decided = decide(entries, now, rules)
    ready = [Pair(PurePosixPath(a), PurePosixPath(s) if s is not None else None) for a, s in decided.ready]
    return Plan(ready, decided.expired, decided.waiting)


def decide(entries: Sequence[Entry], now: float, rules: Rules) -> Decided:
    """``plan`` without building paths for the ready pairs (the planner may hold 100,000 of them)."""
    groups: dict[Key, list[_File]] = {}
    for entry in entries:
        file = _File(entry)
        groups.setdefault(file.key, []).append(file)
    result = Decided()
    for key, members in groups.items():
        deadline = _plan_group(members, now, rules, result)
        if deadline is not None:
            result.waiting[key] = deadline
    return result


class _File:
    """An entry with its name taken apart once: planning asks for each part several times."""

    __slots__ = ("entry", "key", "kind", "name", "path", "stem", "suffix")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.path = path = str(entry.rel)
        cut = path.rfind("/") + 1
        self.name = name = path[cut:]
        self.kind, pair_key = classify(name)
        self.key = path[: cut + len(pair_key)]
        self.stem, suffix = _split(name)
        self.suffix = suffix.lower()

    def posix(self) -> PurePosixPath:
        rel = self.entry.rel
        return rel if isinstance(rel, PurePosixPath) else PurePosixPath(rel)


def _plan_group(members: list[_File], now: float, rules: Rules, out: Decided) -> float | None:
    """Append this group's ready or expired pairs to ``out``; return its next deadline if waiting."""
    members.sort(key=lambda f: (f.kind == "sidecar", f.path))
    if not all(is_text(f.path) for f in members):
        return _plan_bad_names(members, now, rules, out)
    pairs, ambiguous = _match(members)
    deadlines: list[float] = []
    for files, problem in ambiguous:
        settled_at = max(f.entry.settled_at(rules) for f in files)
        if settled_at <= now:
            out.expired.append(Expired(tuple(f.posix() for f in files), problem))
        else:
            deadlines.append(settled_at)
    for rec, side in pairs:
        present = [f for f in (rec, side) if f is not None]
        settled_at = max(f.entry.settled_at(rules) for f in present)
        alone_ok = rec is not None and not rules.require_sidecar and rec.kind == "audio"
        if (rec is not None and side is not None) or alone_ok:
            deadline = _plan_pair(present, settled_at, now, rules, out)
            if deadline is not None:
                deadlines.append(deadline)
            continue
        if rec is not None and rec.kind == "other":
            continue  # an unrelated file with no sidecar is none of our business
        # The timeout runs from when the file was complete: a long recording written in real time
        # must not time out while it is still being written.
        expires_at = settled_at + rules.pair_timeout_s
        if expires_at <= now:
            out.expired.append(Expired((present[0].posix(),), _orphan_problem(present[0].name, rules)))
        else:
            deadlines.append(expires_at)
    return min(deadlines) if deadlines else None


def _plan_pair(present: list[_File], settled_at: float, now: float, rules: Rules, out: Decided) -> float | None:
    """A whole pair (or a lone recording that may go alone): ready, expired, or its next deadline."""
    held = [f for f in present if f.entry.held(now)]
    if held:  # rule 3: looked at again when the hold's look expires; fails once it outlasts the timeout
        expires_at = max(f.entry.settled_at(rules) for f in held) + rules.pair_timeout_s
        if expires_at > now:
            return min(expires_at, *(f.entry.held_until or now for f in held))
        name = held[0].name
        problem = Problem(
            Reason.STILL_OPEN,
            f"{name} was still held open by a writer, unchanged, {rules.settle_s + rules.pair_timeout_s:g} s "
            "after its last change; make the recorder close the file when the call ends, then drop it again",
        )
        out.expired.append(Expired(tuple(f.posix() for f in present), problem))
        return None
    audio = present[0]
    if (
        audio.kind == "audio" and audio.entry.size == 0 and audio.entry.regular
    ):  # rule 4: a buffering writer has not flushed yet
        expires_at = settled_at + rules.pair_timeout_s
        if expires_at > now:
            return expires_at
        waited = f"{rules.pair_timeout_s:g} s"
        problem = Problem(Reason.EMPTY_FILE, f"{audio.name} was still empty (0 bytes) {waited} after it settled")
        out.expired.append(Expired(tuple(f.posix() for f in present), problem))
        return None
    if settled_at > now:
        return settled_at
    out.ready.append((audio.path, present[1].path if len(present) > 1 else None))
    return None


def _match(members: list[_File]) -> tuple[list[tuple[_File | None, _File | None]], list[tuple[list[_File], Problem]]]:
    """Pair sidecars with recordings: ``NAME.mp3.json`` names one, ``NAME.json`` any with that stem."""
    candidates = [f for f in members if f.kind != "sidecar"]
    # Each sidecar with the stem and suffix of its own stem: NAME.mp3 for NAME.mp3.json.
    sidecars = [(f, *_split(f.stem)) for f in members if f.kind == "sidecar"]
    # The exact form claims its recording first, so NAME.json can never steal it.
    sidecars.sort(key=lambda s: s[2].lower() not in AUDIO_EXTENSIONS)
    pairs: list[tuple[_File | None, _File | None]] = []
    ambiguous: list[tuple[list[_File], Problem]] = []
    used: set[str] = set()
    for side, inner_stem, inner_suffix in sidecars:
        if inner_suffix.lower() in AUDIO_EXTENSIONS:
            named = inner_suffix.lower()
            match = [c for c in candidates if c.stem == inner_stem and c.suffix == named]
        else:
            match = [c for c in candidates if c.stem == side.stem and c.path not in used]
        if len(match) > 1:
            names = " or ".join(m.name for m in match)
            problem = Problem(
                Reason.AMBIGUOUS_SIDECAR,
                f"{side.name} could belong to {names}; name it after one recording, e.g. {match[0].name}.json",
            )
            ambiguous.append(([*match, side], problem))
            used.update(m.path for m in match)
            continue
        pairs.append((match[0] if match else None, side))
        used.update(m.path for m in match)
    pairs.extend((c, None) for c in candidates if c.path not in used)
    return pairs, ambiguous


def _plan_bad_names(members: list[_File], now: float, rules: Rules, out: Decided) -> float | None:
    """A group whose names are not valid UTF-8 fails as a whole, once its files are complete."""
    if all(f.kind == "other" for f in members):
        return None
    settled_at = max(f.entry.settled_at(rules) for f in members)
    if settled_at > now:
        return settled_at
    bad = next(f.path for f in members if not is_text(f.path))
    problem = Problem(
        Reason.INVALID_NAME,
        f"{printable(bad)}: the name is not valid UTF-8 and cannot be sent or recorded; "
        "rename it (e.g. convmv -f latin1 -t utf8) and drop it again",
    )
    out.expired.append(Expired(tuple(f.posix() for f in members), problem))
    return None


def _orphan_problem(name: str, rules: Rules) -> Problem:
    waited = f"{rules.pair_timeout_s:g} s"
    kind, stem = classify(name)
    if kind == "sidecar":
        return Problem(
            Reason.MISSING_RECORDING,
            f"sidecar {name} waited {waited} for {stem}.mp3 or {stem}.wav, which never came; "
            "drop the recording and its sidecar again together",
        )
    return Problem(
        Reason.MISSING_SIDECAR,
        f"recording {name} waited {waited} for its sidecar {stem}.json, which never came; "
        "drop both again, or set watch.require_sidecar = false to upload lone recordings",
    )
