"""The adaptive concurrency controller (core/concurrency.py): one round's decision, then whole servers,
then what holds for any sequence of replies (Hypothesis)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vocwatch.core.concurrency import Limit, Rules, observe_round, start

RULES = Rules()


def observe(state: Limit, rules: Rules, wait_s: float, **kw: Any) -> Limit:
    """One reply; the state after it (what a round measured is left out)."""
    return observe_round(state, rules, wait_s, **kw)[0]


def _round(
    state: Limit,
    wait_s: float,
    trip_s: float,
    *,
    saturated: bool = True,
    overloaded: bool = False,
    rules: Rules = RULES,
) -> Limit:
    """One full round: replies each waited ``wait_s``, ``state.limit`` of them every ``trip_s`` (the time a
    slot takes from one upload to its next), until the round ends (the last one overloaded, if so)."""
    n, now = state.limit, state.last_reply or 0.0
    while True:
        now += trip_s / n
        last = state.replies + 1 >= n and now - (state.round_start or 0.0) >= rules.min_round_s
        state, measured = observe_round(
            state, rules, wait_s, now=now, saturated=saturated, overloaded=overloaded and last, held_s=trip_s
        )
        if measured is not None:
            return state


def _learnt(limit: int, slow_start: bool, wait_s: float, client_s: float) -> Limit:
    """A controller past its first round: the usual wait and the client's own part are known."""
    return Limit(limit, slow_start, baseline_s=wait_s, client_s=client_s, round_start=0.0, last_reply=0.0)


CPU = 225.0  # uploads a second the client manages at most (2 cores, a server on the same machine)


@pytest.mark.parametrize(
    ("before", "wait_s", "trip_s", "saturated", "overloaded", "after"),
    [
        # a slow server (replies are most of the round trip), every slot useful: slow start jumps eight times
        (_learnt(4, True, 0.2, 0.005), 0.2, 0.205, True, False, (32, True)),
        (_learnt(32, True, 0.2, 0.005), 0.2, 0.205, True, False, (64, True)),
        (_learnt(64, True, 1.0, 0.005), 1.0, 1.005, True, False, (64, True)),  # never above upload.max_workers
        # a fast server (the round trip is the client's own work): a quarter more, at least one
        (_learnt(4, True, 0.001, 0.017), 0.001, 4 / CPU, True, False, (5, True)),
        # after slow start: a quarter more a round while every slot is useful
        (_learnt(10, False, 0.2, 0.005), 0.2, 0.205, True, False, (12, False)),
        # slots not all taken: nothing learnt, the limit stays
        (_learnt(10, False, 0.2, 0.005), 0.2, 0.205, False, False, (10, False)),
        # more slots than the throughput needs (the client's CPU is the bottleneck: the round trip grew with
        # the limit): back towards what it needs plus the band, at most to three quarters a round
        (_learnt(32, True, 0.001, 0.017), 0.001, 32 / CPU, True, False, (24, False)),
        (_learnt(16, False, 0.001, 0.017), 0.001, 16 / CPU, True, False, (13, False)),
        # a queue within the band (at most twice max(4, a tenth of the limit)): hold, slow start ends
        (_learnt(12, True, 0.001, 0.017), 0.001, 12 / CPU, True, False, (12, False)),
        # slower replies: cut to three quarters, slow start ends
        (_learnt(16, True, 0.2, 0.005), 0.4, 0.405, True, False, (12, False)),
        (_learnt(16, False, 0.001, 0.030), 0.003, 0.033, True, False, (20, False)),  # 2 ms more is noise
        (_learnt(16, False, 0.001, 0.030), 0.010, 0.040, True, False, (12, False)),
        # 429/503: halved, even when the replies were fast
        (_learnt(16, False, 0.2, 0.005), 0.2, 0.205, True, True, (8, False)),
        (_learnt(1, False, 0.2, 0.005), 0.9, 0.905, True, True, (1, False)),  # never below one
    ],
)
def test_one_rounds_decision(
    before: Limit, wait_s: float, trip_s: float, saturated: bool, overloaded: bool, after: tuple[int, bool]
) -> None:
    state = _round(before, wait_s, trip_s, saturated=saturated, overloaded=overloaded)
    assert (state.limit, state.slow_start) == after
    assert state.replies == 0  # a new round begins


@pytest.mark.parametrize(
    ("wait_s", "held_s", "after"),
    [(1.0, 1.05, 32), (0.2, 0.3, 32), (0.001, 0.03, 5)],
    ids=["1s-server", "200ms-server", "fast-server"],
)
def test_the_first_round_judges_by_the_share_of_its_round_trips_spent_waiting(
    wait_s: float, held_s: float, after: int
) -> None:
    state = start(RULES)
    for i in range(4):  # the first round has no duration yet: its round trips are how long slots were held
        state = observe(state, RULES, wait_s, now=i * 0.001, saturated=True, held_s=held_s)
    assert state.limit == after and state.baseline_s == wait_s


def test_a_cut_is_followed_by_a_round_that_measures_nothing() -> None:
    """Right after a cut, more than the new limit are still in flight: that round's round trip would lie."""
    state = _round(_learnt(32, True, 0.001, 0.017), 0.001, 32 / CPU)
    assert state.limit == 24 and state.settling
    state = _round(state, 0.001, 24 / CPU)
    assert state.limit == 24 and not state.settling  # neither grown nor cut on the lying round
    state = _round(state, 0.001, 24 / CPU)
    assert state.limit == 18  # measured again: still too many for the CPU


def test_nothing_changes_before_a_round_is_complete() -> None:
    state = _learnt(8, True, 0.2, 0.005)
    for i in range(7):
        state = observe(state, RULES, 5.0, now=i * 0.2, saturated=True, overloaded=True)
    assert state.limit == 8 and state.replies == 7


def test_a_round_lasts_at_least_min_round_s_unless_the_server_says_429() -> None:
    state = _learnt(4, False, 0.001, 0.06)
    for i in range(4):  # four replies in 4 ms: too short to say anything about throughput
        state, measured = observe_round(state, RULES, 0.001, now=0.001 * (i + 1), saturated=True)
    assert measured is None and state.replies == 4
    state, measured = observe_round(state, RULES, 0.001, now=0.1, saturated=True)
    assert measured is not None and state.replies == 0
    for i in range(state.limit):
        state = observe(state, RULES, 0.001, now=0.1 + 0.001 * (i + 1), saturated=True, overloaded=True)
    assert state.replies == 0 and not state.slow_start  # halved at once


def test_an_idle_inbox_is_no_round_trip() -> None:
    """A reply long after the one before (the queue ran dry) begins a new round: the gap is not the server's."""
    state = _round(_learnt(10, False, 0.001, 0.004), 0.001, 0.1)
    limit = state.limit
    state = observe(state, RULES, 0.001, now=(state.last_reply or 0) + 600.0, saturated=True)
    assert state.limit == limit and state.replies == 1 and state.round_start == state.last_reply


def _serve(wait_for: Callable[[int], float], seconds: float, *, client_s: float = 0.005, cpu: float = CPU) -> list[int]:
    """Drive the controller against a server whose reply wait depends on the uploads in flight (always as
    many as the limit allows: a full queue) and a client that manages ``cpu`` uploads a second at most and
    spends ``client_s`` on each. The limit in force at each round's end, for ``seconds`` of uploads."""
    state, now, seen = start(RULES), 0.0, []
    while now < seconds:
        n = state.limit
        wait = wait_for(n)
        trip = max(wait + client_s, n / cpu)  # Little: n in flight at the lesser of n / (w + c) and the CPU's
        for _ in range(n):
            now += trip / n
            state = observe(state, RULES, wait, now=now, saturated=True, held_s=trip)
        seen.append(state.limit)
    return seen


@pytest.mark.parametrize(
    ("server", "settles_within"),
    [
        # a fast server on the same machine: from 4 to 16 at once deliver the same (the CPU is the limit),
        # more only contend for it
        (lambda n: 0.001, (4, 16)),
        # 200 ms: CPU-bound from about 46 at once; the limit settles where every slot is still useful
        (lambda n: 0.2, (47, 64)),
        # 1 s: never CPU-bound below 64: the maximum
        (lambda n: 1.0, (64, 64)),
        # a server that slows past 12 at once (its own queue): the limit stays near 12
        (lambda n: 0.001 if n <= 12 else 0.001 + 0.004 * (n - 12), (6, 16)),
    ],
    ids=["0ms", "200ms", "1s", "knee-at-12"],
)
def test_against_whole_servers_the_limit_finds_the_right_level(
    server: Callable[[int], float], settles_within: tuple[int, int]
) -> None:
    seen = _serve(server, 60.0)
    low, high = settles_within
    assert all(low <= n <= high for n in seen[-50:]), seen[-50:]
    assert max(seen) <= RULES.maximum


def test_a_fast_server_never_sees_the_maximum() -> None:
    """On a fast server the client is the bottleneck from the start: no slow start to 64 and back."""
    assert max(_serve(lambda n: 0.001, 10.0)) <= 16


def test_a_slow_server_reaches_the_maximum_in_two_round_trips() -> None:
    seen = _serve(lambda n: 1.0, 2.5)  # 4 -> 32 -> 64
    assert seen[:2] == [32, 64]


def test_a_server_that_starts_answering_429_backs_the_limit_off_and_it_grows_again() -> None:
    state = _learnt(64, False, 0.2, 0.005)
    state = _round(state, 0.2, 0.205, overloaded=True)
    assert state.limit == 32 and not state.slow_start
    state = _round(state, 0.2, 0.205)  # the round right after the cut measures nothing
    state = _round(state, 0.2, 0.205)
    assert state.limit == 40  # a quarter more a round from here


def test_max_workers_bounds_the_limit() -> None:
    rules = Rules(initial=2, maximum=5)
    state = start(rules)
    for i in range(200):
        state = observe(state, rules, 0.2, now=i * 0.1, saturated=True, held_s=0.2)
    assert state.limit == 5


# -- properties: for any replies ------------------------------------------------------------------

REPLY = st.tuples(
    st.floats(0.0, 3.0),  # reply wait
    st.floats(0.0, 2.0),  # seconds since the reply before
    st.booleans(),  # saturated
    st.booleans(),  # 429/503
)
RULESETS = st.builds(
    lambda most, first, least: Rules(
        initial=max(min(least, most), min(first, most)), maximum=most, minimum=min(least, most)
    ),
    st.integers(1, 128),
    st.integers(1, 128),
    st.integers(1, 4),
)


def _history(rules: Rules, replies: list[tuple[float, float, bool, bool]]) -> tuple[Limit, float]:
    state, now = start(rules), 0.0
    for wait, dt, saturated, overloaded in replies:
        now += dt
        state = observe(state, rules, wait, now=now, saturated=saturated, overloaded=overloaded, held_s=wait + dt)
        assert rules.minimum <= state.limit <= rules.maximum
    return state, now


def _finish(state: Limit, rules: Rules, now: float, wait: float, **kw: bool) -> tuple[int, Limit]:
    """The rest of the round in progress, every reply alike and close enough to the one before to be no
    idle gap; the limit it had."""
    before = state.limit
    while True:
        now += rules.min_round_s / 2
        state, measured = observe_round(state, rules, wait, now=now, **{"saturated": True, **kw})
        if measured is not None:
            return before, state


@settings(max_examples=300, deadline=None)
@given(RULESETS, st.lists(REPLY, max_size=300))
def test_the_limit_never_leaves_minimum_to_maximum(
    rules: Rules, replies: list[tuple[float, float, bool, bool]]
) -> None:
    _history(rules, replies)  # asserted at every reply


@settings(max_examples=200, deadline=None)
@given(RULESETS, st.lists(REPLY, max_size=100), st.floats(0.0, 3.0))
def test_a_round_with_a_429_or_503_halves_the_limit(
    rules: Rules, replies: list[tuple[float, float, bool, bool]], wait: float
) -> None:
    state, now = _history(rules, replies)
    before, after = _finish(state, rules, now, wait, overloaded=True)
    assert after.limit == max(rules.minimum, math.floor(before * rules.overload_decrease))
    assert not after.slow_start


@settings(max_examples=200, deadline=None)
@given(RULESETS, st.lists(REPLY, min_size=1, max_size=100))
def test_a_round_of_slower_replies_cuts_to_three_quarters(
    rules: Rules, replies: list[tuple[float, float, bool, bool]]
) -> None:
    state, now = _history(rules, [(w, dt, s, False) for w, dt, s, _ in replies])
    if state.overloaded or state.baseline_s is None:
        return  # a 429 already in this round (halves), or no usual wait yet to be slower than
    threshold = state.baseline_s * (1 + rules.tolerance) + rules.floor_s
    # However many replies end the round (it lasts min_round_s) and however quick the ones already in it
    # were, a mean over them all is past the threshold with each new one this slow.
    slower = threshold * (state.replies + 1) + 1.0
    before, after = _finish(state, rules, now, slower)
    assert after.limit == max(rules.minimum, math.floor(before * rules.decrease))


@settings(max_examples=200, deadline=None)
@given(RULESETS, st.lists(REPLY, max_size=100), st.floats(0.0, 3.0))
def test_a_round_without_every_slot_taken_never_grows(
    rules: Rules, replies: list[tuple[float, float, bool, bool]], wait: float
) -> None:
    state, now = _history(rules, replies)
    if state.saturated:
        return  # the round in progress already had every slot taken
    before, after = _finish(state, rules, now, wait, saturated=False)
    assert after.limit <= before
