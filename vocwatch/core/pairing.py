"""Pure pairing rules: which recordings and sidecars are ready, still waiting, or expired.

No I/O and no clock here: callers pass what they observed and ``now``.
"""

# When is a file complete? Only then may it be taken; the planner applies these rules.
#
# 1. Settled: its signature (size, mtime, inode, ctime) has not changed for ``watch.settle_seconds``.
#    This works everywhere (polling, network shares, files renamed in from outside the inbox) and
#    is the only proof against a producer that pauses: settle_seconds must exceed its longest pause.
# 2. Renamed into place from an ignored name (``.NAME.tmp``, ``NAME.part``, ...): complete at once,
#    as the rename is atomic and the ignored name hid the file while it was written.
# 3. Closed after writing (inotify's IN_CLOSE_WRITE): complete ``close_grace`` (the smaller of
#    settle_seconds and CLOSE_GRACE_S) after the close, if it has not changed and was not opened
#    again meanwhile (a writer that reopens to append shows up within the grace).
# Rules 2 and 3 only shorten the wait: just before claiming, the planner asks the kernel whether
# any process still has the file open for writing (a read lease, validate.open_for_writing). If
# one has, the settle wait applies; if the kernel cannot tell (the file belongs to another user
# and vocwatch lacks CAP_LEASE, or a network filesystem), a close proves nothing and the settle
# wait applies, while a rename is still trusted. Counting opens and closes from events would not
# do: inotify merges identical consecutive events, so two opens by two writers can arrive as one.
# After claiming, the pipeline checks the opened file again after hashing and after sending, so a
# late write puts the pair back to wait.

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from vocwatch.core.model import Pair, Problem

AUDIO_EXTENSIONS = frozenset({".mp3", ".wav"})
CLOSE_GRACE_S = 1.0
Kind = Literal["audio", "sidecar", "other"]
# A relative, "/"-separated path. The planner keeps str: on a 100,000-pair backlog, PurePosixPaths
# cost ~35 MB more, and building them was most of the scan's time.
Rel = str | PurePosixPath
# A pair group: the path without its pair suffix (``sub/call`` for sub/call.wav and sub/call.mp3.json).
Key = str


@dataclass(frozen=True, slots=True)
class Entry:
    """One observed file: ``stable_since`` is when its signature was first seen unchanged, ``complete_at``
    when a finished writer (rule 2, ``renamed``, or rule 3 above) lets it count as settled while unchanged.
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

    @property
    def signature(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ino, self.ctime_ns)

    def settled_at(self, rules: Rules) -> float:
        """When this file counts as complete, if it does not change before then."""
        at = self.stable_since + rules.settle_s
        return at if self.complete_at is None else min(at, self.complete_at)


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
) -> Entry:
    """Fold a new observation of ``rel`` (and any proof that its writer finished) into what was known."""
    if previous is None:
        return Entry(rel, size, mtime_ns, now, now, ino, ctime_ns, complete_at, renamed)
    if previous.signature != (size, mtime_ns, ino, ctime_ns):
        # A change voids every earlier proof of completeness: the settle wait starts again.
        return replace(
            previous,
            size=size,
            mtime_ns=mtime_ns,
            ino=ino,
            ctime_ns=ctime_ns,
            stable_since=now,
            complete_at=complete_at,
            renamed=renamed,
        )
    if complete_at is None or (previous.complete_at is not None and previous.complete_at <= complete_at):
        return previous
    return replace(previous, complete_at=complete_at, renamed=renamed)


def reopened(entry: Entry) -> Entry:
    """The file was opened again, or is still open for writing: only the settle wait can prove it complete."""
    return entry if entry.complete_at is None else replace(entry, complete_at=None, renamed=False)


def taken_early(entry: Entry, now: float, rules: Rules) -> bool:
    """True when only rule 2 or 3 (not the settle wait) makes this file complete at ``now``."""
    return entry.stable_since + rules.settle_s > now


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

    @property
    def close_grace_s(self) -> float:
        return min(self.settle_s, CLOSE_GRACE_S)


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
            if settled_at <= now:
                out.ready.append((present[0].path, side.path if side is not None else None))
            else:
                deadlines.append(settled_at)
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
                "ambiguous_sidecar",
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
        "invalid_name",
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
            "missing_recording",
            f"sidecar {name} waited {waited} for {stem}.mp3 or {stem}.wav, which never came; "
            "drop the recording and its sidecar again together",
        )
    return Problem(
        "missing_sidecar",
        f"recording {name} waited {waited} for its sidecar {stem}.json, which never came; "
        "drop both again, or set watch.require_sidecar = false to upload lone recordings",
    )
