"""Run one child process and measure it: wall time, CPU (its own and its reaped descendants'), memory.

CPU comes from ``os.wait4`` on the child, which covers the child and every descendant it waited
for (xargs' curls, a shell loop's curls). Memory comes from /proc: the child's VmHWM (its exact
high-water mark, read every 20 ms and just before it is stopped) and, for tools that run several
processes at once, the largest sum of VmRSS over the process tree, sampled every 50 ms. The peak is
the larger of the two. (``ru_maxrss`` is not used: Linux folds the RSS the child had before exec,
a copy of this Python process, into it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Measured:
    wall_s: float
    cpu_s: float  # user + system of the child and its reaped descendants
    sys_s: float  # the system (kernel) part of cpu_s
    maxrss_mb: float  # ru_maxrss: not used for the peak (it includes the parent's RSS at fork time)
    tree_rss_mb: float  # the largest sampled sum of VmRSS over the child's process tree
    hwm_mb: float  # the child's own VmHWM (high-water mark), as last read while it ran
    returncode: int
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return max(self.tree_rss_mb, self.hwm_mb)


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def _tree(root: int) -> list[int]:
    """The pids of ``root`` and its descendants, from the ppid field of /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


class _Sampler(threading.Thread):
    """Largest VmRSS sum over the process tree, and the root's own VmHWM, as last seen."""

    def __init__(self, pid: int, tree: bool) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.tree = tree
        self.peak_mb = 0.0
        self.hwm_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            pids = _tree(self.pid) if self.tree else [self.pid]
            self.peak_mb = max(self.peak_mb, sum(rss_mb(p) for p in pids))
            self.hwm_mb = max(self.hwm_mb, hwm_mb(self.pid))
            if self.stop.wait(0.05 if self.tree else 0.02):
                return


_LIVE: set[Child] = set()


def stop_all() -> None:
    """Stop children that were started but never finished (an interrupted or failed run)."""
    for child in list(_LIVE):
        if child.alive():
            child.proc.kill()
        child.finish(timeout=10)


class Child:
    """A started child; ``finish`` ends it (if asked) and collects its resource usage."""

    def __init__(
        self,
        argv: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        stdout: Path | None = None,
        stdin: Path | None = None,
        tree: bool = False,
    ) -> None:
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115 - closed in finish
        inp = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115 - closed in finish
        self._files = [f for f in (out, inp) if not isinstance(f, int)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if stdout else subprocess.DEVNULL,
            stdin=inp,
        )
        self.pid = self.proc.pid
        self.marks: dict[str, float] = {}
        self._reaped: tuple[int, os.struct_rusage, float] | None = None
        self._sampler = _Sampler(self.pid, tree)
        self._sampler.start()
        _LIVE.add(self)

    def _reap(self) -> bool:
        """Collect the child if it has exited (never through Popen, which would lose its rusage)."""
        if self._reaped is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._reaped = (status, usage, time.monotonic())
        return self._reaped is not None

    def alive(self) -> bool:
        return not self._reap()

    def wait_until(self, done: Callable[[], bool], timeout: float, every: float = 0.02) -> float | None:
        """Poll ``done`` until it is true (seconds since start) or the child exits or time runs out."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if done():
                return time.monotonic() - self.started
            if not self.alive():
                return time.monotonic() - self.started if done() else None
            time.sleep(every)
        return None

    def finish(self, *, terminate: bool = False, timeout: float = 600.0) -> Measured:
        ended = None
        hwm = 0.0
        if terminate and self.alive():
            ended = time.monotonic()
            hwm = hwm_mb(self.pid)
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self._reap():
            if time.monotonic() > deadline:
                self.proc.kill()
                deadline += 60
            time.sleep(0.005)
        assert self._reaped is not None
        _LIVE.discard(self)
        status, usage, reaped_at = self._reaped
        if ended is None:
            ended = reaped_at
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._sampler.stop.set()
        self._sampler.join()
        for f in self._files:
            f.close()
        return Measured(
            wall_s=ended - self.started,
            cpu_s=usage.ru_utime + usage.ru_stime,
            sys_s=usage.ru_stime,
            maxrss_mb=usage.ru_maxrss / 1024,
            tree_rss_mb=self._sampler.peak_mb,
            hwm_mb=max(hwm, self._sampler.hwm_mb),
            returncode=self.proc.returncode,
            marks=self.marks,
        )


def run(argv: Sequence[str | Path], *, timeout: float, **kwargs: object) -> Measured:
    child = Child(argv, **kwargs)  # type: ignore[arg-type]
    return child.finish(timeout=timeout)
