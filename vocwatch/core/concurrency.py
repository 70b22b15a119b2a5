"""Adaptive upload concurrency (``upload.workers = "auto"``): a round trip's worth of uploads at a time.

In the spirit of TCP Vegas, Netflix's concurrency-limits and Vector's adaptive request concurrency. Uploads
are judged a round at a time (as many replies as the limit allows at once). From the second round on, a
round also has a throughput (replies over its duration) and so, by Little's law, a round trip: ``limit /
throughput``, the time one slot takes from one upload to its next. The shortest round trip seen
(``base_s``: the client's own part at its quickest plus the server's usual wait) is what an upload costs
with nothing queued, so ``throughput * base_s`` slots are doing useful work and the rest of the limit is a
queue. A round

- that met 429/503 halves the limit; one whose replies were slower than usual (the reply-wait band) cuts
  it to three quarters: the server is the bottleneck;
- whose queue is longer than the band allows cuts the limit to what its throughput needs plus the band:
  more slots no longer bought throughput (on two cores and a fast server, they only contend for the CPU);
- whose queue is short, with every slot taken, grows: more slots still buy throughput. In slow start
  (until the first cut or full band) eight times as many when the replies waited at least ``floor_s`` (a
  slow server: 4 -> 32 -> 64 in two round trips), twice as many when they came back at once; a quarter more
  after that;
- in between holds. The limit stays within ``minimum`` and ``maximum`` (upload.max_workers).

Pure: the runtime feeds it reply waits, a monotonic ``now`` and whether the slots were all taken.
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
    overload_decrease: float = 0.5  # the cut when the server answers 429 or 503; also the deepest queue cut
    drift: float = 0.1  # how fast the wait baseline follows slower rounds (a server that stays slower)
    slow_start_growth: int = 8  # slow start: this many times as many while replies are most of the round trip
    slow_server: float = 0.5  # "most": the share of the round trip spent waiting for the reply
    growth: float = 0.25  # otherwise this share more a round (at least one) while the queue stays short
    queue: int = 4  # the band: at least this many queued slots are fine ...
    queue_share: float = 0.1  # ... or this share of the limit, whichever is more; twice that is too many
    min_round_s: float = 0.1  # a round lasts at least this long (a throughput over a few ms is noise; 429s cut at once)
    idle_gap: float = 2.0  # a reply this many round trips (or min rounds) after the one before: the inbox idled

    def __post_init__(self) -> None:
        assert 1 <= self.minimum <= self.initial <= self.maximum, self
        assert self.slow_start_growth >= 1 and self.growth >= 0, self


@dataclass(frozen=True, slots=True)
class Limit:
    """The controller's state: the limit in force, what it learnt, and the round being measured."""

    limit: int
    slow_start: bool = True
    settling: bool = False  # the limit was just cut: this round still has the old limit in flight
    baseline_s: float | None = None  # the mean reply wait of the fast rounds: what "latency holds" means
    client_s: float | None = None  # the shortest round trip less its reply wait: the client's own part
    round_start: float | None = None  # when this round began (the previous round's last reply)
    last_reply: float | None = None
    replies: int = 0  # in this round
    wait_sum_s: float = 0.0
    held_sum_s: float = 0.0  # the first round's round trips: each slot's time from taking it to the reply
    held: int = 0
    saturated: bool = False  # every slot was taken at some point this round: more slots could be used
    overloaded: bool = False  # a 429 or 503 this round

    @property
    def base_s(self) -> float | None:
        """An upload's round trip with nothing queued: the client's quickest part plus the usual wait."""
        if self.client_s is None or self.baseline_s is None:
            return None
        return self.client_s + self.baseline_s


@dataclass(frozen=True, slots=True)
class Round:
    """What a finished round measured (for the log): its mean wait, round trip and useful slots."""

    mean_wait_s: float
    round_trip_s: float | None
    useful: float | None  # throughput * base_s: the slots doing work, the rest queued


def start(rules: Rules) -> Limit:
    return Limit(rules.initial)


def band(limit: int, rules: Rules) -> float:
    """How many queued slots are fine at this limit; more than twice that is a queue to cut."""
    return max(float(rules.queue), rules.queue_share * limit)


def observe_round(
    state: Limit,
    rules: Rules,
    wait_s: float,
    *,
    now: float,
    saturated: bool,
    overloaded: bool = False,
    held_s: float | None = None,
) -> tuple[Limit, Round | None]:
    """One reply (``wait_s``: seconds from the end of the body to the reply, at monotonic ``now``;
    ``held_s``: since its slot was taken, when known): the new state, and what the round measured when this
    reply ended one."""
    base = state.base_s
    gap = None if base is None else rules.idle_gap * max(base, rules.min_round_s)
    if state.last_reply is not None and gap is not None and now - state.last_reply > gap:
        # Nothing came back for longer than round trips take: the queue ran dry. Its duration says
        # nothing about the server or the client, so a new round begins here (429/503 still count).
        state = replace(state, round_start=now, replies=0, wait_sum_s=0.0, saturated=False)
    state = replace(
        state,
        round_start=now if state.round_start is None else state.round_start,
        last_reply=now,
        replies=state.replies + 1,
        wait_sum_s=state.wait_sum_s + max(0.0, wait_s),
        held_sum_s=state.held_sum_s + (0.0 if held_s is None else max(0.0, held_s)),
        held=state.held + (held_s is not None),
        saturated=state.saturated or saturated,
        overloaded=state.overloaded or overloaded,
    )
    assert state.round_start is not None
    elapsed = now - state.round_start
    first = state.baseline_s is None  # the first round starts at its first reply: no duration to judge
    if state.replies < state.limit or (not first and not state.overloaded and elapsed < rules.min_round_s):
        return state, None
    return _decide(state, rules, elapsed, first)


def _decide(state: Limit, rules: Rules, elapsed: float, first: bool) -> tuple[Limit, Round]:
    mean = state.wait_sum_s / state.replies
    baseline, client = state.baseline_s, state.client_s
    limit, slow_start = state.limit, state.slow_start
    # Little's law: in flight / throughput. Not right after a cut: more than the limit were still in flight.
    trip = None if first or state.settling or elapsed <= 0 else limit * elapsed / state.replies
    if trip is not None:
        own = max(0.0, trip - mean)
        client = own if client is None else min(client, own)
    slower = baseline is not None and mean > baseline * (1 + rules.tolerance) and mean - baseline > rules.floor_s
    if baseline is None or mean < baseline:
        baseline = mean
    elif not state.overloaded:
        baseline += (mean - baseline) * rules.drift
    useful = None
    if trip is not None and client is not None:
        useful = limit * (client + baseline) / trip
    allowed = band(limit, rules)
    if state.overloaded:
        limit, slow_start = math.floor(limit * rules.overload_decrease), False
    elif slower:
        limit, slow_start = math.floor(limit * rules.decrease), False
    elif useful is not None and limit - useful > 2 * allowed:
        # More slots than the throughput needs: back to the top of the band (a round that stalled once
        # must not empty it), at most to three quarters a round.
        limit = max(math.ceil(limit * rules.decrease), math.ceil(useful + 2 * allowed))
        slow_start = False
    elif useful is not None and limit - useful >= allowed:
        slow_start = False  # the queue is in the band: the limit is where it should be
    elif state.saturated and not state.settling:
        # Slots are cheap while the replies are what an upload waits for: slow start jumps. While the
        # client's own work is most of the round trip, more slots soon contend for its CPU: a step.
        seen = trip if trip is not None else (state.held_sum_s / state.held if state.held else None)
        if slow_start and (seen is None or mean >= rules.slow_server * seen):
            limit *= rules.slow_start_growth
        else:
            limit += max(1, math.floor(limit * rules.growth))
    limit = max(rules.minimum, min(rules.maximum, limit))
    kept = Limit(
        limit,
        slow_start,
        limit < state.limit,
        baseline,
        client,
        round_start=state.last_reply,
        last_reply=state.last_reply,
    )
    return kept, Round(mean, trip, useful)
