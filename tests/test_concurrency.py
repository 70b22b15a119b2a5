"""The adaptive concurrency controller (core/concurrency.py): one round's decision, then whole servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vocwatch.core.concurrency import Limit, Rules, observe, start

RULES = Rules()


def _round(state: Limit, wait_s: float, *, saturated: bool = True, overloaded: bool = False) -> Limit:
    """One full round: ``state.limit`` replies, each waited ``wait_s`` (the last one overloaded, if so)."""
    n = state.limit
    for i in range(n):
        state = observe(state, RULES, wait_s, saturated=saturated, overloaded=overloaded and i == n - 1)
    return state


@pytest.mark.parametrize(
    ("before", "wait_s", "saturated", "overloaded", "after"),
    [
        # slow start: the limit quadruples while replies hold and every slot is taken
        (Limit(4, True, 0.200), 0.200, True, False, (16, True)),
        (Limit(32, True, 0.200), 0.210, True, False, (64, True)),
        (Limit(64, True, 0.200), 0.200, True, False, (64, True)),  # never above upload.max_workers
        # after the first slowdown: one more slot a round
        (Limit(10, False, 0.200), 0.200, True, False, (11, False)),
        # slots not all used: nothing learnt, the limit stays
        (Limit(10, False, 0.200), 0.200, False, False, (10, False)),
        # slower replies: cut to three quarters, slow start ends
        (Limit(16, True, 0.200), 0.400, True, False, (12, False)),
        (Limit(16, False, 0.001), 0.003, True, False, (17, False)),  # 2 ms more is noise (floor 5 ms)
        (Limit(16, False, 0.001), 0.010, True, False, (12, False)),
        # 429/503: halved, even when the replies were fast
        (Limit(16, False, 0.200), 0.200, True, True, (8, False)),
        (Limit(1, False, 0.200), 0.900, True, True, (1, False)),  # never below one
        # the first round sets the baseline and grows
        (Limit(4, True, None), 1.0, True, False, (16, True)),
    ],
)
def test_one_rounds_decision(
    before: Limit, wait_s: float, saturated: bool, overloaded: bool, after: tuple[int, bool]
) -> None:
    state = _round(before, wait_s, saturated=saturated, overloaded=overloaded)
    assert (state.limit, state.slow_start) == after
    assert state.replies == 0  # a new round begins


def test_nothing_changes_before_a_round_is_complete() -> None:
    state = Limit(8, True, 0.2)
    for _ in range(7):
        state = observe(state, RULES, 5.0, saturated=True, overloaded=True)
    assert state.limit == 8 and state.replies == 7


def _serve(wait_for: Callable[[int], float], replies: int, rules: Rules = RULES) -> list[int]:
    """Drive the controller against a server whose reply wait depends on the uploads in flight (always
    as many as the limit allows: a full queue). The limits it went through, one per reply."""
    state, seen = start(rules), []
    for _ in range(replies):
        state = observe(state, rules, wait_for(state.limit), saturated=True)
        seen.append(state.limit)
    return seen


@pytest.mark.parametrize(
    ("server", "settles_within"),
    [
        # a slow API that waits the same for any number of uploads (200 ms, 1 s): straight to the maximum
        (lambda n: 0.2, (64, 64)),
        (lambda n: 1.0, (64, 64)),
        # a server (or a client CPU) that slows past 12 at once: the limit stays near 12
        (lambda n: 0.001 if n <= 12 else 0.001 + 0.004 * (n - 12), (9, 16)),
    ],
    ids=["200ms-flat", "1s-flat", "knee-at-12"],
)
def test_against_whole_servers_the_limit_finds_the_right_level(
    server: Callable[[int], float], settles_within: tuple[int, int]
) -> None:
    seen = _serve(server, 3000)
    low, high = settles_within
    assert all(low <= n <= high for n in seen[-500:]), seen[-500:]
    assert max(seen) <= RULES.maximum


def test_a_flat_server_reaches_the_maximum_in_a_few_rounds() -> None:
    seen = _serve(lambda n: 1.0, 4 + 16)  # slow start: two rounds, 4 -> 16 -> 64
    assert seen[-1] == 64


def test_a_server_that_starts_answering_429_backs_the_limit_off_and_it_grows_again() -> None:
    state = start(RULES)
    while state.limit < 64 or state.replies:  # slow start to the maximum, to the end of that round
        state = observe(state, RULES, 0.2, saturated=True)
    state = _round(state, 0.2, overloaded=True)
    assert state.limit == 32 and not state.slow_start
    state = _round(state, 0.2)
    assert state.limit == 33  # additive from here


def test_max_workers_bounds_the_limit() -> None:
    rules = Rules(initial=2, maximum=5)
    seen = _serve(lambda n: 0.2, 200, rules)
    assert max(seen) == 5 and seen[-1] == 5
