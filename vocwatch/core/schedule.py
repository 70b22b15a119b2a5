"""Pure rules for running for months: bandwidth rates and timetables, the upload window, done/ layouts,
and the virtual-scheduling (GCRA) arithmetic of the shared bandwidth limiter.

Times of day are seconds since local midnight (the edges turn a clock's epoch time into one); nothing here
reads a clock.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime

DAY_S = 86400.0
# K, M, G are binary multiples, as rclone's --bwlimit counts them: 20M = 20 MiB/s.
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMG]?)")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
OFF = ("", "off")


class ScheduleError(ValueError):
    """A value that is no rate, timetable, window or layout; the message says what to write instead."""


def _q(text: str) -> str:
    """``text`` in double quotes, as a TOML file writes it."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _suggest_rate(text: str) -> str:
    squeezed = re.sub(r"\s+", "", text).upper()
    squeezed = re.sub(r"(I?B)(/S|PS)?$", "", squeezed)
    m = _RATE.fullmatch(squeezed)
    return f"; write {m.group(1)}{m.group(2)}" if m else "; write a number of bytes per second with K, M or G (20M)"


def parse_rate(text: str) -> int | None:
    """``"20M"`` -> 20 MiB/s in bytes; ``""`` or ``"off"`` -> None (no limit)."""
    value = text.strip()
    if value.lower() in OFF:
        return None
    m = _RATE.fullmatch(value.upper())
    if m is None:
        raise ScheduleError(f"{_q(text)} is not a rate{_suggest_rate(text)}")
    rate = int(float(m.group(1)) * _UNITS[m.group(2)])
    if rate <= 0:
        raise ScheduleError(f"{_q(text)} is no rate above zero; write off for no limit, or use upload.window to pause")
    return rate


def parse_time(text: str) -> int:
    """``"08:30"`` -> seconds since midnight."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ScheduleError(f"{_q(text)} is not a time of day; write HH:MM (00:00 to 23:59)")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def show_time(seconds: float) -> str:
    whole = int(seconds) % int(DAY_S)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}"


def show_rate(rate: int | None) -> str:
    if rate is None:
        return "off"
    for unit in ("G", "M", "K"):
        size = _UNITS[unit]
        if rate >= size and rate % size == 0:
            return f"{rate // size}{unit}"
    return str(rate)


@dataclass(frozen=True, slots=True)
class Timetable:
    """Rates by local time of day: each entry holds from its time until the next (and wraps past midnight)."""

    entries: tuple[tuple[int, int | None], ...]  # (seconds since midnight, bytes/s or None), sorted

    def rate_at(self, day_s: float) -> int | None:
        current = self.entries[-1][1]  # before the first time: the last entry's rate, from the day before
        for at, rate in self.entries:
            if at <= day_s:
                current = rate
        return current

    def next_switch(self, day_s: float) -> float:
        """Seconds from ``day_s`` until the next entry begins (DAY_S for a single rate)."""
        if len(self.entries) == 1:
            return DAY_S
        later = [at for at, _ in self.entries if at > day_s]
        target = later[0] if later else self.entries[0][0] + DAY_S
        return target - day_s

    @property
    def limited(self) -> bool:
        return any(rate is not None for _, rate in self.entries)

    def show(self) -> str:
        if len(self.entries) == 1:
            return show_rate(self.entries[0][1])
        return " ".join(f"{show_time(at)},{show_rate(rate)}" for at, rate in self.entries)


def parse_bandwidth(text: str) -> Timetable:
    """``"20M"``, ``"off"``, ``""`` or a timetable ``"08:00,2M 18:00,20M 23:00,off"``."""
    value = text.strip()
    if "," not in value:
        return Timetable(((0, parse_rate(value)),))
    entries: list[tuple[int, int | None]] = []
    for part in value.split():
        when, sep, rate = part.partition(",")
        if not sep:
            raise ScheduleError(f"{_q(part)} in {_q(text)} is not TIME,RATE; write e.g. 08:00,2M 18:00,20M 23:00,off")
        entries.append((parse_time(when), parse_rate(rate)))
    times = [at for at, _ in entries]
    if times != sorted(set(times)):
        raise ScheduleError(f"{_q(text)}: the times must rise through the day, each once (08:00,2M 18:00,20M)")
    return Timetable(tuple(entries))


@dataclass(frozen=True, slots=True)
class Window:
    """A local-time window in which uploads may start; ``end`` before ``start`` crosses midnight."""

    start: int
    end: int

    def inside(self, day_s: float) -> bool:
        if self.start < self.end:
            return self.start <= day_s < self.end
        return day_s >= self.start or day_s < self.end

    def until_change(self, day_s: float) -> float:
        """Seconds from ``day_s`` until the window next opens (when closed) or closes (when open)."""
        edge = self.end if self.inside(day_s) else self.start
        return (edge - day_s) % DAY_S or DAY_S

    @property
    def opens(self) -> str:
        return show_time(self.start)

    def show(self) -> str:
        return f"{show_time(self.start)}-{show_time(self.end)}"


def parse_window(text: str) -> Window | None:
    """``"20:00-06:00"`` -> a Window; ``""`` -> None (uploads start at any time)."""
    value = text.strip()
    if not value:
        return None
    start, sep, end = value.partition("-")
    if not sep:
        raise ScheduleError(f"{_q(text)} is not a window; write START-END in local time, e.g. 20:00-06:00")
    window = Window(parse_time(start), parse_time(end))
    if window.start == window.end:
        raise ScheduleError(f'{_q(text)} is empty; write "" for no window (uploads at any time)')
    return window


# -- done/ layout --------------------------------------------------------------------------------


def check_layout(layout: str) -> None:
    """Refuse a done/ layout that names anything but ``accepted``, or that leaves done/."""
    if not layout:
        return
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(layout) if name is not None]
    except ValueError as exc:
        raise ScheduleError(f"{_q(layout)} is not a layout ({exc}); write e.g. {{accepted:%Y/%m/%d}}") from exc
    if not fields or any(name != "accepted" for name in fields):
        raise ScheduleError(f"{_q(layout)}: only {{accepted:FORMAT}} can be used; write e.g. {{accepted:%Y/%m/%d}}")
    sample = layout_folder(layout, datetime(2026, 11, 25, 13, 5, 9))
    parts = sample.split("/")
    if sample.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ScheduleError(f"{_q(layout)} makes {_q(sample)}: sub-folders must stay below done/ (no '/', '..' ends)")


def layout_folder(layout: str, accepted: datetime) -> str:
    """The sub-folder of done/ for a pair accepted at ``accepted`` (local time): "" for a flat done/."""
    return layout.format(accepted=accepted) if layout else ""


# -- the limiter's arithmetic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """Virtual scheduling: ``free_at`` is when the bytes reserved so far have all been paid for."""

    free_at: float = float("-inf")


def reserve(state: Reservation, now: float, nbytes: int, rate: float, burst_s: float) -> tuple[Reservation, float]:
    """Reserve ``nbytes`` at ``rate`` bytes/s; returns the new state and when those bytes may go.

    Idle time earns at most ``burst_s`` seconds of credit, so any interval of T seconds carries at most
    ``rate * (T + burst_s)`` bytes plus one reservation, across every caller that shares the state.
    """
    start = max(state.free_at, now - burst_s)
    ready_at = max(now, start)
    return Reservation(start + nbytes / rate), ready_at


def grant_size(rate: float, wanted: int, slice_s: float = 0.1, floor: int = 16 * 1024) -> int:
    """How many bytes one grant hands out: small enough that a timetable switch bites within ``slice_s``."""
    return max(1, min(wanted, max(floor, int(rate * slice_s))))
