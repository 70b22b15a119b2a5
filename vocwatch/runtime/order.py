"""``upload.order``: the ready pairs waiting for a worker, handed out oldest first or in arrival order.

A heap keyed by the recording's mtime (``oldest``) or a FIFO (``arrival``). Entries are small tuples of the
planner's own str paths, so a 100,000-pair backlog adds a few MB on top of what the planner holds anyway.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Literal

Ready = tuple[str, str | None]
Order = Literal["oldest", "arrival"]


class ReadyQueue:
    def __init__(self, order: Order = "oldest") -> None:
        self.order = order
        self._heap: list[tuple[int, int, Ready]] = []
        self._fifo: deque[tuple[int, Ready]] = deque()
        self._members: set[Ready] = set()
        self._seq = itertools.count()  # ties (and arrival order) by when a pair became ready

    def __len__(self) -> int:
        return len(self._members)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __contains__(self, pair: object) -> bool:
        return pair in self._members

    def add(self, pair: Ready, mtime_ns: int) -> None:
        if pair in self._members:
            return
        self._members.add(pair)
        if self.order == "oldest":
            heapq.heappush(self._heap, (mtime_ns, next(self._seq), pair))
        else:
            self._fifo.append((mtime_ns, pair))

    def pop(self) -> Ready:
        pair = heapq.heappop(self._heap)[2] if self.order == "oldest" else self._fifo.popleft()[1]
        self._members.discard(pair)
        return pair

    def oldest_mtime_ns(self) -> int | None:
        """The recording mtime of the oldest ready pair (for vocwatch_oldest_pending_age_seconds)."""
        try:  # read from the metrics thread while the planner changes it: a miss reads as "none now"
            if self.order == "oldest":
                return self._heap[0][0] if self._heap else None
            return min((m for m, _ in list(self._fifo)), default=None)
        except (IndexError, RuntimeError):
            return None
