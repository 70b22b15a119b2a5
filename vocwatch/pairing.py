"""Pure pairing rules: which recordings and sidecars are ready, still waiting, or expired.

No I/O and no clock here: callers pass what they observed and ``now``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from vocwatch.model import Pair, Problem

AUDIO_EXTENSIONS = frozenset({".mp3", ".wav"})
Kind = Literal["audio", "sidecar", "other"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One observed file in the inbox.

    ``stable_since`` is when its (size, mtime) signature was first seen unchanged;
    ``first_seen`` is when the name was first seen at all (for the pair timeout).
    """

    rel: PurePosixPath
    size: int
    mtime_ns: int
    first_seen: float
    stable_since: float

    @property
    def signature(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)


def observe(
    previous: Entry | None, rel: PurePosixPath, size: int, mtime_ns: int, now: float
) -> Entry:
    """Fold a new observation of ``rel`` into what was known of it."""
    if previous is None:
        return Entry(rel, size, mtime_ns, first_seen=now, stable_since=now)
    if previous.signature == (size, mtime_ns):
        return previous
    return replace(previous, size=size, mtime_ns=mtime_ns, stable_since=now)


def is_ignored(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _stem_suffix(name: str) -> tuple[str, str]:
    """``PurePosixPath(name).stem`` and ``.suffix`` of a plain file name, without building a path."""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], name[i:]
    return name, ""


def classify(name: str) -> tuple[Kind, str]:
    """Return the kind of a file name and its pair key (the stem a partner must share).

    ``call.mp3`` and ``call.json`` share the key ``call``; ``call.mp3.json`` pairs with
    ``call.mp3`` only. Extensions are matched case-insensitively.
    """
    # Plain names are split as strings: a scan classifies every file several times, and building
    # a PurePosixPath each time cost seconds on a 100,000-file inbox. Anything else: pathlib, as before.
    base = name if name not in ("", ".", "..") and "/" not in name else PurePosixPath(name).name
    stem, suffix = _stem_suffix(base)
    suffix = suffix.lower()
    if suffix == ".json":
        inner_stem, inner_suffix = _stem_suffix(stem)
        if inner_suffix.lower() in AUDIO_EXTENSIONS:
            return "sidecar", inner_stem
        return "sidecar", stem
    if suffix in AUDIO_EXTENSIONS:
        return "audio", stem
    return "other", stem if suffix else name


@dataclass(frozen=True, slots=True)
class Expired:
    """Files that can never form a pair, with the reason they go to failed/."""

    files: tuple[PurePosixPath, ...]
    problem: Problem


@dataclass(frozen=True, slots=True)
class Plan:
    ready: list[Pair] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    # Keys (folder, stem) still waiting, and the earliest time any of them could change state.
    waiting: list[tuple[str, str]] = field(default_factory=list)
    next_check: float | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    settle_s: float
    pair_timeout_s: float
    require_sidecar: bool = True


def group_key(rel: PurePosixPath) -> tuple[str, str]:
    return (str(rel.parent), classify(rel.name)[1])


def plan(entries: Sequence[Entry], now: float, rules: Rules) -> Plan:
    """Decide, for the entries of some pair groups, which pairs are ready, waiting or expired."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(group_key(entry.rel), []).append(entry)
    result = Plan()
    deadlines: list[float] = []
    for key, members in groups.items():
        deadline = _plan_group(members, now, rules, result)
        if deadline is not None:
            result.waiting.append(key)
            deadlines.append(deadline)
    return replace(result, next_check=min(deadlines) if deadlines else None)


def _plan_group(members: list[Entry], now: float, rules: Rules, out: Plan) -> float | None:
    """Append this group's ready or expired pairs to ``out``; return its next deadline if waiting."""
    kinds = [(classify(e.rel.name)[0], e) for e in members]
    audio = [e for kind, e in kinds if kind == "audio"]
    others = [e for kind, e in kinds if kind == "other"]
    sidecars = [e for kind, e in kinds if kind == "sidecar"]
    # Files that are neither audio nor JSON pair only so that their sidecar can fail with a reason.
    candidates = audio + others
    pairs: list[tuple[Entry | None, Entry | None]] = []
    used: set[PurePosixPath] = set()
    for side in sidecars:
        exact = [c for c in candidates if side.rel.stem == c.rel.name]
        loose = [c for c in candidates if side.rel.stem == c.rel.stem]
        match = exact or loose
        if len(match) > 1:
            names = " or ".join(sorted(m.rel.name for m in match))
            out.expired.append(
                Expired(
                    (side.rel, *sorted(m.rel for m in match)),
                    Problem(
                        "ambiguous_sidecar",
                        f"{side.rel.name} could belong to {names}; name it after one recording, "
                        f"e.g. {match[0].rel.name}.json",
                    ),
                )
            )
            used.update(m.rel for m in match)
            used.add(side.rel)
            continue
        pairs.append((match[0] if match else None, side))
        if match:
            used.add(match[0].rel)
    pairs.extend((c, None) for c in candidates if c.rel not in used)
    deadlines: list[float] = []
    for rec, side in pairs:
        present = [e for e in (rec, side) if e is not None]
        settled_at = max(e.stable_since for e in present) + rules.settle_s
        if rec is not None and side is not None:
            if settled_at <= now:
                out.ready.append(Pair(rec.rel, side.rel))
            else:
                deadlines.append(settled_at)
            continue
        if rec is not None and not rules.require_sidecar and classify(rec.rel.name)[0] == "audio":
            if settled_at <= now:
                out.ready.append(Pair(rec.rel, None))
            else:
                deadlines.append(settled_at)
            continue
        lone = present[0]
        if rec is not None and classify(rec.rel.name)[0] == "other":
            continue  # an unrelated file with no sidecar is none of our business
        expires_at = lone.first_seen + rules.pair_timeout_s
        if expires_at <= now:
            out.expired.append(Expired((lone.rel,), _orphan_problem(lone.rel, rules)))
        else:
            deadlines.append(expires_at)
    return min(deadlines) if deadlines else None


def _orphan_problem(rel: PurePosixPath, rules: Rules) -> Problem:
    minutes = f"{rules.pair_timeout_s:g} s"
    kind, stem = classify(rel.name)
    if kind == "sidecar":
        return Problem(
            "missing_recording",
            f"sidecar {rel.name} waited {minutes} for {stem}.mp3 or {stem}.wav, which never came; "
            "drop the recording and its sidecar again together",
        )
    return Problem(
        "missing_sidecar",
        f"recording {rel.name} waited {minutes} for its sidecar {stem}.json, which never came; "
        "drop both again, or set watch.require_sidecar = false to upload lone recordings",
    )
