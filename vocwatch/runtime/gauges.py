"""Gauges read at scrape time that the alert rules and the dashboard need (deploy/prometheus, deploy/grafana)."""

from __future__ import annotations

from vocwatch.edges.stats import Stats
from vocwatch.edges.watcher import Watcher
from vocwatch.runtime.gate import Gate


def expose_health(stats: Stats, *, gate: Gate, watcher: Watcher, workers: int) -> None:
    """Backoff, worker count and watcher health on ``stats``' registry; each read is cheap and thread-safe."""
    stats.live(
        "vocwatch_backoff_seconds",
        "Seconds until uploads resume after transient errors (0: not backing off)",
        lambda: gate.state().reopens_in,
    )
    # in_flight / workers is the utilisation; a pool always busy at its size wants more workers (or bandwidth).
    stats.live("vocwatch_workers", "Upload threads (upload.workers; upload.max_workers under auto)", lambda: workers)
    stats.live(
        "vocwatch_watcher_healthy",
        "1 while the watcher runs on the inbox that exists now; 0: new files wait for the rescan",
        watcher.healthy,
    )
