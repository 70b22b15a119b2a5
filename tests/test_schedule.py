"""The pure rules of running for months, as tables: rates, timetables, windows, layouts, filesystem types."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from vocwatch.core import filesystems
from vocwatch.core.schedule import (
    DAY_S,
    Reservation,
    ScheduleError,
    check_layout,
    layout_folder,
    parse_bandwidth,
    parse_rate,
    parse_window,
    reserve,
)
from vocwatch.edges.config import ConfigError, load_settings

M = 1024**2
H = 3600


@pytest.mark.parametrize(
    ("text", "rate"),
    [("", None), ("off", None), ("OFF", None), ("20M", 20 * M), ("20m", 20 * M), ("512K", 512 * 1024),
     ("1G", 1024**3), ("1.5M", int(1.5 * M)), ("1000", 1000), (" 2M ", 2 * M)],
)  # fmt: skip
def test_rates(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20 MB", '"20 MB" is not a rate; write 20M'),
        ("20MB/s", '"20MB/s" is not a rate; write 20M'),
        ("20MiB", '"20MiB" is not a rate; write 20M'),
        ("fast", '"fast" is not a rate; write a number'),
        ("0", "no rate above zero"),
        ("-1M", "is not a rate"),
    ],
)
def test_bad_rates_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(")):
        parse_rate(text)


TABLE = "08:00,2M 18:00,20M 23:00,off"


@pytest.mark.parametrize(
    ("at", "rate", "switch_in"),
    [
        (0, None, 8 * H),  # after 23:00 yesterday: off until 08:00
        (8 * H - 1, None, 1),
        (8 * H, 2 * M, 10 * H),
        (12 * H, 2 * M, 6 * H),
        (18 * H, 20 * M, 5 * H),
        (23 * H, None, 9 * H),
        (DAY_S - 1, None, 8 * H + 1),
    ],
)
def test_timetable(at: float, rate: int | None, switch_in: float) -> None:
    table = parse_bandwidth(TABLE)
    assert table.rate_at(at) == rate
    assert table.next_switch(at) == switch_in
    assert table.show() == TABLE


def test_a_single_rate_is_a_one_entry_timetable() -> None:
    table = parse_bandwidth("20M")
    assert table.rate_at(0) == table.rate_at(DAY_S - 1) == 20 * M
    assert table.limited and not parse_bandwidth("off").limited and not parse_bandwidth("").limited


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("18:00,2M 08:00,20M", "must rise"),
        ("08:00,2M 08:00,3M", "must rise"),
        ("8am,2M", "not a time of day"),
        ("24:00,2M", "not a time of day"),
        ("08:00,2M 18:00", "not TIME,RATE"),
        ("08:00,2 MB", "not TIME,RATE"),
        ("08:00,2MB", "not a rate; write 2M"),
    ],
)
def test_bad_timetables(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_bandwidth(text)


@pytest.mark.parametrize(
    ("text", "at", "inside", "change_in"),
    [
        ("20:00-06:00", 19 * H, False, 1 * H),
        ("20:00-06:00", 20 * H, True, 10 * H),
        ("20:00-06:00", 23 * H, True, 7 * H),
        ("20:00-06:00", 3 * H, True, 3 * H),
        ("20:00-06:00", 6 * H, False, 14 * H),
        ("09:00-17:30", 9 * H, True, 8.5 * H),
        ("09:00-17:30", 17.5 * H, False, 15.5 * H),
        ("09:00-17:30", 8 * H, False, 1 * H),
    ],
)
def test_windows(text: str, at: float, inside: bool, change_in: float) -> None:
    window = parse_window(text)
    assert window is not None
    assert window.inside(at) is inside
    assert window.until_change(at) == change_in
    assert window.show() == text


@pytest.mark.parametrize("text", ["20:00", "20:00-20:00", "8-6", "20:00-25:00"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_window(text)


def test_no_window() -> None:
    assert parse_window("") is None


@pytest.mark.parametrize(
    ("layout", "folder"),
    [("", ""), ("{accepted:%Y/%m/%d}", "2026/11/25"), ("{accepted:%Y-%m}", "2026-11"), ("y{accepted:%Y}", "y2026")],
)
def test_layouts(layout: str, folder: str) -> None:
    check_layout(layout)
    assert layout_folder(layout, datetime(2026, 11, 25, 13, 5)) == folder


@pytest.mark.parametrize("layout", ["{date:%Y}", "/abs/{accepted:%Y}", "{accepted:%Y}/../x", "{accepted", "plain"])
def test_bad_layouts(layout: str) -> None:
    with pytest.raises(ScheduleError):
        check_layout(layout)


def test_reservations_never_hand_out_more_than_the_rate_plus_the_burst() -> None:
    state, now, sent = Reservation(), 0.0, []
    for _ in range(1000):
        state, at = reserve(state, now, 1000, 10_000.0, 1.0)
        sent.append((at, 1000))
        now = at
    assert sum(n for at, n in sent if at <= 30.0) <= 10_000 * 31 + 1000
    # Idle time earns no more than the burst.
    state, at = reserve(state, now + 1000.0, 1000, 10_000.0, 1.0)
    assert state.free_at == now + 1000.0 - 1.0 + 0.1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[upload]\nbandwidth = "20 MB"\n', 'upload.bandwidth: "20 MB" is not a rate; write 20M'),
        ('[upload]\nbandwidth = "18:00,2M 08:00,1M"\n', "upload.bandwidth: "),
        ('[upload]\nwindow = "20:00"\n', 'upload.window: "20:00" is not a window'),
        ('[upload]\norder = "newest"\n', "upload.order: Input should be 'oldest' or 'arrival'"),
        ('[folders]\ndone_action = "shred"\n', "folders.done_action: Input should be 'move' or 'delete'"),
        ("[folders]\ndone_retention_days = -1\n", "folders.done_retention_days: Input should be greater than"),
        ('[folders]\ndone_layout = "{when:%Y}"\n', "folders.done_layout: "),
        ("[ledger]\nkeep_days = -3\n", "ledger.keep_days: Input should be greater than"),
        ('[watch]\nmode = "nfs"\n', "watch.mode: "),
    ],
)
def test_every_new_key_refuses_a_bad_value_by_name(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert any(message in p for p in caught.value.problems), caught.value.problems


# -- watch.mode = "auto": by statfs f_type -------------------------------------------------------------

NFS, CIFS, SMB2, FUSE = 0x6969, 0xFF534D42, 0xFE534D42, 0x65735546
EXT4, TMPFS, NINE_P, UNKNOWN = 0xEF53, 0x01021994, 0x01021997, 0x1234


@pytest.mark.parametrize(
    ("mode", "types", "chosen", "polled"),
    [
        ("auto", [("/in", EXT4)], "inotify", []),
        ("auto", [("/in", TMPFS)], "inotify", []),
        ("auto", [("/in", UNKNOWN)], "inotify", []),
        ("auto", [("/in", None)], "inotify", []),
        ("auto", [("/in", NFS)], "poll", ["/in"]),
        ("auto", [("/in", CIFS)], "poll", ["/in"]),
        ("auto", [("/in", SMB2)], "poll", ["/in"]),
        ("auto", [("/in", FUSE)], "poll", ["/in"]),
        ("auto", [("/in", NINE_P)], "poll", ["/in"]),
        ("auto", [("/in", EXT4), ("/in/site-b", NFS), ("/in/tmp", TMPFS)], "poll", ["/in/site-b"]),
        ("inotify", [("/in", NFS)], "inotify", []),
        ("poll", [("/in", EXT4)], "poll", []),
    ],
)
def test_auto_mode_by_filesystem_type(
    mode: str, types: list[tuple[str, int | None]], chosen: str, polled: list[str]
) -> None:
    choice = filesystems.choose(mode, types)
    assert choice.mode == chosen
    assert [path for path, _ in choice.polled] == polled


def test_every_remote_type_says_why() -> None:
    for f_type, (name, why) in filesystems.REMOTE.items():
        assert name and "inotify" in why, f_type
        assert filesystems.choose("auto", [("/in", f_type)]).show().startswith("poll: /in is ")
