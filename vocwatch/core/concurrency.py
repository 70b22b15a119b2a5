"""Adaptive upload concurrency (``upload.workers = "auto"``): additive increase, multiplicative decrease.

In the spirit of TCP congestion control and Vector's adaptive request concurrency: uploads are judged a
round at a time (as many replies as the limit allows at once). A round whose replies came as fast as
the best rounds did, with every slot in use, earns one more slot (four times as many while in slow start,
until the first slowdown); a round whose replies were slower, or that met 429/503, cuts the limit.
Pure: the runtime feeds it reply waits and says whether the slots were all taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Rules:
    initial: int = 4
    maximum: int = 64  # upload.max_workers: never more at once
    minimum: int = 1
    tolerance: float = 0.5  # a round's mean wait may exceed the baseline by this fraction ...
    floor_s: float = 0.005  # ... and by at least this many seconds (noise) before it counts as slower
    decrease: float = 0.75  # the cut when replies slow down
    overload_decrease: float = 0.5  # the cut when the server answers 429 or 503
    drift: float = 0.1  # how fast the baseline follows slower rounds (a server that stays slower)
    # Slow start multiplies by this a round (TCP doubles): 4 -> 64 in two round trips, which at 1 s a reply
    # is two seconds instead of four; the first slowdown ends it, and an overshoot is cut back at once.
    slow_start_growth: int = 4

    def __post_init__(self) -> None:
        assert 1 <= self.minimum <= self.initial <= self.maximum, self


@dataclass(frozen=True, slots=True)
class Limit:
    """The controller's state: the limit in force and the round being measured."""

    limit: int
    slow_start: bool = True
    baseline_s: float | None = None  # the mean reply wait of the fast rounds: what "latency holds" means
    replies: int = 0  # in this round
    wait_sum_s: float = 0.0
    saturated: bool = False  # every slot was taken at some point this round: more slots could be used
    overloaded: bool = False  # a 429 or 503 this round


def start(rules: Rules) -> Limit:
    return Limit(rules.initial)


def observe(state: Limit, rules: Rules, wait_s: float, *, saturated: bool, overloaded: bool = False) -> Limit:
    """One reply (``wait_s``: seconds from the end of the body to the reply); a new limit at a round's end."""
    state = replace(
        state,
        replies=state.replies + 1,
        wait_sum_s=state.wait_sum_s + max(0.0, wait_s),
        saturated=state.saturated or saturated,
        overloaded=state.overloaded or overloaded,
    )
    if state.replies < state.limit:
        return state
    mean = state.wait_sum_s / state.replies
    base = state.baseline_s
    limit, slow_start = state.limit, state.slow_start
    slower = base is not None and mean > base * (1 + rules.tolerance) and mean - base > rules.floor_s
    if state.overloaded:
        limit, slow_start = math.floor(limit * rules.overload_decrease), False
    elif slower:
        limit, slow_start = math.floor(limit * rules.decrease), False
    elif state.saturated:
        limit = limit * rules.slow_start_growth if slow_start else limit + 1
    if base is None or mean < base:
        base = mean
    elif not state.overloaded:
        base += (mean - base) * rules.drift
    return Limit(max(rules.minimum, min(rules.maximum, limit)), slow_start, base)
