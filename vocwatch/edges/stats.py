"""Live counters: the STATUS line reads them, and Prometheus scrapes them (prometheus-client)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import prometheus_client as prom

from vocwatch.core.model import End
from vocwatch.core.reasons import Reason

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The ends a worker reports through finished(): vocwatch_uploads_total{outcome}.
_OUTCOMES = (End.DONE, End.DUPLICATE, End.FAILED, End.RELEASED)


class Stats:
    """Thread-safe; one registry per daemon, so tests can run several side by side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.retries = 0
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self._uploads = prom.Counter("vocwatch_uploads", "Recordings finished, by outcome", ["outcome"], registry=r)
        self._bytes = prom.Counter("vocwatch_upload_bytes", "Bytes of recordings accepted by the API", registry=r)
        self._retries = prom.Counter("vocwatch_retries", "Upload attempts that will be retried", registry=r)
        self._duration = prom.Histogram(
            "vocwatch_upload_duration_seconds", "Time of one accepted upload request", buckets=_BUCKETS, registry=r
        )
        self._jobs = prom.Counter("vocwatch_jobs", "Job status replies, by remote status", ["status"], registry=r)
        self._body = prom.Counter(
            "vocwatch_upload_body_sent_bytes", "Recording bytes handed to the network (upload.bandwidth)", registry=r
        )
        self._audio = prom.Counter(
            "vocwatch_audio_seconds", "Seconds of audio in recordings accepted by the API", registry=r
        )
        self._last = prom.Gauge("vocwatch_last_success_timestamp_seconds", "When an upload last succeeded", registry=r)
        self._failures = prom.Counter(
            "vocwatch_failures", "Recordings moved to failed/, by reason (NAME.error.json)", ["reason"], registry=r
        )
        # Every outcome and reason from the start at 0: increase() and rate() see the first one, and an
        # alert or a dashboard query names a series that exists before anything has gone wrong.
        for outcome in _OUTCOMES:
            self._uploads.labels(outcome)
        for reason in Reason:
            self._failures.labels(reason)
        # "No success for a while" counts from the later of this and the last success (never 0 at start).
        started = prom.Gauge("vocwatch_start_time_seconds", "When this daemon started (Unix time)", registry=r)
        started.set(time.time())

    def finished(
        self, state: str, *, reason: str = "", nbytes: int = 0, seconds: float = 0.0, audio_s: float = 0.0
    ) -> None:
        """One claimed pair's journey ended; a failure names its ``reason`` (a core.reasons.Reason)."""
        with self._lock:
            self.outcomes[state] += 1
        self._uploads.labels(state).inc()
        if state == End.FAILED:
            self.failed(reason)
        if state == End.DONE:
            self._bytes.inc(nbytes)
            self._audio.inc(audio_s)
            self._duration.observe(seconds)
            self._last.set(time.time())

    def failed(self, reason: str) -> None:
        """A recording went to failed/ for ``reason``: also a job that failed after its upload was accepted."""
        self._failures.labels(reason or Reason.UNREADABLE).inc()

    def body_bytes(self, at: float, nbytes: int) -> None:
        """The bandwidth limiter handed out ``nbytes`` of a recording's body."""
        self._body.inc(nbytes)

    def retried(self, reason: str) -> None:
        with self._lock:
            self.retries += 1
        self._retries.inc()

    def job_status(self, status: str) -> None:
        self._jobs.labels(status).inc()

    def identify(self, instance: str, ledger: str) -> None:
        """``vocwatch_instance_info{instance, ledger}``: which daemon of a fleet these metrics are."""
        prom.Info("vocwatch_instance", "This daemon's instance and ledger backend", registry=self.registry).info(
            {"instance": instance, "ledger": ledger}
        )

    def live(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (queue depth, in flight, auth paused)."""
        prom.Gauge(name, help_text, registry=self.registry).set_function(read)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.outcomes, "retries": self.retries}


def serve(stats: Stats, listen: str) -> Callable[[], None]:
    """Serve /metrics on ``host:port``; returns the function that stops it."""
    host, _, port = listen.rpartition(":")
    server, thread = prom.start_http_server(int(port), addr=host or "127.0.0.1", registry=stats.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
