"""The runs timed by the sink's clock: drop-to-upload latency, and start-up on a large backlog.

Both start the real daemon (``vocwatch run``) with settle_seconds = 0 against a sink that stamps
every request's arrival (nginx's access log, or bench/pysink.py when nginx is not there).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.corpus import Item, ensure_backlog, link_backlog, link_into
from bench.proc import Child, rss_mb
from bench.sink import API_KEY, Sink
from bench.tools import VOCWATCH, count_audio, write_config


class _Counter:
    """Counts the sink's log lines as they come, reading only what is new."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.pos = sink.offset()
        self.n = 0

    def poll(self) -> int:
        assert self.sink.log is not None
        with open(self.sink.log, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.n += data.count(b"\n", 0, end)
        self.pos += end
        return self.n


def _start_daemon(run: Path, sink: Sink, workers: int) -> Child:
    config = write_config(run, sink, workers=workers)
    (run / "spool" / "inbox").mkdir(parents=True, exist_ok=True)
    return Child([*VOCWATCH, "run", "--config", config], env={"VOCWATCH_API_KEY": API_KEY}, stdout=run / "log")


def _wait_log(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.02)
    return False


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def latency(sink: Sink, work: Path, items: list[Item], *, interval_s: float = 0.03) -> dict[str, Any]:
    """Rename pairs into a watched inbox one by one; time each from its rename to its upload's start."""
    run = work / "runs" / "latency"
    shutil.rmtree(run, ignore_errors=True)
    stage = run / "stage"  # same filesystem as the inbox, outside it: a rename is the drop
    link_into(items, stage)
    child = _start_daemon(run, sink, workers=4)
    inbox, done = run / "spool" / "inbox", run / "spool" / "done"
    try:
        if not _wait_log(run / "log", '"watch.started"', 20):
            raise RuntimeError(f"the daemon did not start watching; see {run / 'log'}")
        time.sleep(0.2)
        offset = sink.offset()
        dropped: dict[str, float] = {}
        for item in items:
            os.rename(stage / item.audio.name, inbox / item.audio.name)
            os.rename(stage / item.sidecar.name, inbox / item.sidecar.name)
            dropped[item.recording_id] = time.time()
            time.sleep(interval_s)
        child.wait_until(lambda: count_audio(done) >= len(items), 60, every=0.05)
    finally:
        child.finish(terminate=True)
    firsts: dict[str, float] = {}
    for arrival in sink.arrivals(offset):
        rid = arrival.key.rpartition("-")[0]  # the Idempotency-Key is "<recording id>-<digest>" (no "-" in it)
        firsts.setdefault(rid, arrival.start)
    lat = [(firsts[rid] - t) * 1000 for rid, t in dropped.items() if rid in firsts]
    ok = len(lat) == len(items)
    if ok:
        shutil.rmtree(run, ignore_errors=True)
    return {
        "drops": len(items),
        "measured": len(lat),
        "interval_ms": interval_s * 1000,
        "p50_ms": round(_pct(lat, 50), 1) if lat else None,
        "p99_ms": round(_pct(lat, 99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        "ok": ok,
        "sink": sink.kind,
        "resolution_ms": 1,
    }


def backlog(sink: Sink, work: Path, pairs: int, marks: tuple[int, int], *, timeout_s: float = 240) -> dict[str, Any]:
    """Start the daemon on ``pairs`` tiny pairs; time to the first upload, RSS at two marks, peak RSS."""
    src_names, generated_s = ensure_backlog(work / "backlog" / str(pairs), pairs)
    run = work / "runs" / "backlog"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.monotonic()
    link_backlog(work / "backlog" / str(pairs), src_names, run / "spool" / "inbox")
    linked_s = time.monotonic() - t0
    counter = _Counter(sink)
    start_offset = counter.pos
    launched = time.time()
    child = _start_daemon(run, sink, workers=4)
    rss_at: dict[int, float] = {}
    at_s: dict[int, float] = {}
    first_s = None
    samples: list[tuple[float, int, float]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and child.alive() and len(rss_at) < len(marks):
            n = counter.poll()
            now = time.monotonic() - child.started
            if n and first_s is None:
                first_s = sink.arrivals(start_offset)[0].start - launched
            rss = rss_mb(child.pid)
            samples.append((round(now, 2), n, round(rss, 1)))
            for mark in marks:
                if n >= mark and mark not in rss_at:
                    rss_at[mark], at_s[mark] = rss, now
            time.sleep(0.1)
    finally:
        measured = child.finish(terminate=True, timeout=60)
    small, big = marks
    growth = rss_at[big] - rss_at[small] if len(rss_at) == 2 else None
    rate = (big - small) / (at_s[big] - at_s[small]) if len(at_s) == 2 else None
    ok = len(rss_at) == 2 and first_s is not None
    if ok:
        shutil.rmtree(run, ignore_errors=True)
    return {
        "pairs": pairs,
        "file_bytes": "about 1 KB WAV + 70 B sidecar each",
        "generated_s": round(generated_s, 1),
        "linked_s": round(linked_s, 1),
        "first_upload_s": round(first_s, 2) if first_s is not None else None,
        "rss_mb_at": {str(k): round(v, 1) for k, v in rss_at.items()},
        "seconds_at": {str(k): round(v, 1) for k, v in at_s.items()},
        "growth_mb": round(growth, 1) if growth is not None else None,
        "files_s_between_marks": round(rate, 1) if rate is not None else None,
        "peak_rss_mb": round(measured.peak_mb, 1),
        "cpu_s": round(measured.cpu_s, 1),
        "samples": samples[:: max(1, len(samples) // 60)],
        "ok": ok,
        "done_in_folder": None if ok else count_audio(run / "spool" / "done"),
    }


def startup(sink: Sink, work: Path, *, launches: int = 5) -> dict[str, Any]:
    """The daemon on an empty inbox: seconds to READY, and the CPU and memory start-up alone costs; the
    median launch of ``launches`` (one launch on a shared 2-core machine varies by +-30%)."""
    runs: list[dict[str, Any]] = []
    for _ in range(launches):
        run = work / "runs" / "startup"
        shutil.rmtree(run, ignore_errors=True)
        child = _start_daemon(run, sink, workers=4)
        try:
            ready = _wait_log(run / "log", '"daemon.ready"', 20)
            ready_s = time.monotonic() - child.started
            rss = rss_mb(child.pid)
        finally:
            measured = child.finish(terminate=True)
        if not ready:
            return {"ready_s": None, "rss_mb": round(rss, 1), "cpu_s": round(measured.cpu_s, 3), "note": "no READY"}
        shutil.rmtree(run, ignore_errors=True)
        runs.append({"ready_s": ready_s, "rss_mb": rss, "cpu_s": measured.cpu_s})
    chosen = sorted(runs, key=lambda r: r["ready_s"])[(len(runs) - 1) // 2]
    return {
        "ready_s": round(chosen["ready_s"], 3),
        "rss_mb": round(chosen["rss_mb"], 1),
        "cpu_s": round(chosen["cpu_s"], 3),
        "ready_s_all": [round(r["ready_s"], 3) for r in runs],
        "note": f"vocwatch run on an empty inbox, stopped once READY; the median of {launches} launches; "
        "CPU includes the shutdown",
    }
