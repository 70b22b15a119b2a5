"""``python -m bench.profile CLASS``: the daemon on one corpus class under py-spy; top frames printed.

Needs py-spy in the venv (``.venv/bin/pip install py-spy``; for the benchmark only, not a
vocwatch dependency). Samples only threads that are on a CPU (py-spy's default, idle excluded),
so the listing shows where the daemon's CPU goes. ``--backlog N`` profiles start-up on N tiny pairs
instead, until the first 1,000 uploads.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.corpus import ensure_backlog, ensure_corpus, link_backlog, link_into
from bench.proc import _tree
from bench.sink import API_KEY, start_sink
from bench.tools import VOCWATCH, count_audio, write_config

HERE = Path(__file__).resolve().parent


ROLES = (
    ("Pool._work", "upload workers"),
    ("Planner.run", "planner"),
    ("StatusPoller", "status poller"),
    ("watchdog/", "watchdog"),
    ("Daemon.run", "main loop"),
    ("entry (vocwatch/cli/main.py", "main: start-up"),
)


def _role(frames: list[str]) -> str:
    for needle, role in ROLES:
        if any(needle in f for f in frames):
            return role
    return "other"


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive sample shares from py-spy's collapsed ("raw") stacks, overall and per thread role."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    by_role: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        by_role[_role(frames)][frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self (top frames):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive (functions on the stack):"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top * 2) if not f.startswith("<module>")]
    for role, frames in sorted(by_role.items(), key=lambda kv: -sum(kv[1].values())):
        share = sum(frames.values())
        out += ["", f"{role}: {share / total:.1%} of samples; its top frames:"]
        out += [f"  {n / share:6.1%}  {f}" for f, n in frames.most_common(max(5, top // 3))]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("cls", nargs="?", default="small", choices=("small", "medium", "large"))
    p.add_argument("--workers", type=lambda v: v if v == "auto" else int(v), default=4, help='a count or "auto"')
    p.add_argument("--backlog", type=int, default=0, help="profile start-up on N tiny pairs instead")
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL (py-spy --gil)")
    p.add_argument("--idle", action="store_true", help="also samples of waiting threads (py-spy --idle)")
    args = p.parse_args()
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("python -m bench.profile: install py-spy first: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    work = HERE / "work"
    run = work / "runs" / "profile"
    shutil.rmtree(run, ignore_errors=True)
    sink = start_sink(work / "sink", install=False)
    spy_proc: subprocess.Popen[bytes] | None = None
    try:
        config = write_config(run, sink, workers=args.workers)
        inbox, done = run / "spool" / "inbox", run / "spool" / "done"
        if args.backlog:
            names, _ = ensure_backlog(work / "backlog" / str(args.backlog), args.backlog)
            link_backlog(work / "backlog" / str(args.backlog), names, inbox)
            goal = 1000
        else:
            corpus, _ = ensure_corpus(work / "corpus")
            link_into(corpus[args.cls], inbox)
            goal = len(corpus[args.cls])
        raw = run / "profile.txt"
        argv = [str(spy), "record", "--format", "raw", "-o", str(raw), "--rate", str(args.rate), "--nonblocking"]
        argv += ["--gil"] if args.gil else []
        argv += ["--idle"] if args.idle else []
        argv += ["--", *VOCWATCH, "run", "--config", str(config)]
        log = open(run / "log", "wb")  # noqa: SIM115 - closed below
        spy_proc = subprocess.Popen(
            argv, env={**os.environ, "VOCWATCH_API_KEY": API_KEY}, stdout=log, stderr=subprocess.STDOUT
        )
        started = time.monotonic()
        while count_audio(done) < goal and time.monotonic() - started < 300 and spy_proc.poll() is None:
            time.sleep(0.05)
        print(f"{count_audio(done)} pairs in done/ after {time.monotonic() - started:.1f} s", file=sys.stderr)
        for pid in _tree(spy_proc.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        spy_proc.wait(timeout=120)
        log.close()
        print(summarize(raw, args.top))
        print(f"\nraw stacks: {raw}", file=sys.stderr)
    finally:
        if spy_proc is not None and spy_proc.poll() is None:  # interrupted: stop py-spy and the daemon
            for pid in reversed(_tree(spy_proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            spy_proc.wait()
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
