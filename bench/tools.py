"""One throughput run per tool: the baselines (curl, xargs, httpx), the machine's limit, and vocwatch.

Every run sends the same corpus to the same sink and is measured the same way (bench/proc.py).
The baselines only send: no ledger, no moves, no fsync; vocwatch does its whole journey (claim,
hash, ledger commits, upload, move to done/), so the comparison is conservative for vocwatch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import Item, link_into
from bench.proc import Child, Measured
from bench.sink import API_KEY, TENANT, Sink

# BENCH_VOCWATCH overrides the command (e.g. another checkout's venv/bin/vocwatch, or a wrapper).
VOCWATCH = shlex.split(os.environ.get("BENCH_VOCWATCH", "")) or [str(Path(sys.executable).with_name("vocwatch"))]
CURL = ["curl", "-sS", "-f", "-o", "/dev/null"]
AUDIO_SUFFIXES = (".wav", ".mp3")


@dataclass
class Result:
    tool: str
    cls: str
    files: int
    bytes: int
    wall_s: float
    cpu_s: float
    peak_mb: float
    first_upload_s: float | None = None  # launch to the first request at the sink
    connections: int | None = None  # distinct TCP connections the sink saw
    sink_bytes: int | None = None  # request bytes the sink read (headers + bodies)
    ok: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def files_s(self) -> float:
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s else 0.0

    @property
    def steady_files_s(self) -> float:
        """Files/s from the first request at the sink to the end: start-up left out."""
        busy = self.wall_s - (self.first_upload_s or 0.0)
        return self.files / busy if busy > 0 else 0.0

    @property
    def cpu_s_gb(self) -> float:
        return self.cpu_s / (self.bytes / 1e9) if self.bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "files_s": round(self.files_s, 2),
            "steady_files_s": round(self.steady_files_s, 2),
            "mb_s": round(self.mb_s, 2),
            "cpu_s_per_gb": round(self.cpu_s_gb, 2),
        }


@dataclass
class Context:
    sink: Sink
    work: Path
    timeout_s: float = 240.0


def _listing(items: list[Item], path: Path) -> Path:
    path.write_text("".join(f"{i.audio}\t{i.sidecar}\t{i.content_type}\n" for i in items))
    return path


def curl_sequential(ctx: Context, items: list[Item], run: Path) -> Child:
    script = (
        "while IFS=$'\\t' read -r audio side ctype; do\n"
        '  curl -sS -f -o /dev/null -H "Authorization: Bearer $KEY" '
        '-F "audio=@$audio;type=$ctype" -F "metadata=<$side" "$URL" || exit 1\n'
        "done\n"
    )
    return Child(
        ["bash", "-c", script],
        env={"KEY": API_KEY, "URL": ctx.sink.upload_url},
        stdin=_listing(items, run / "list.tsv"),
        tree=True,
    )


def curl_xargs(workers: int) -> Callable[[Context, list[Item], Path], Child]:
    def start(ctx: Context, items: list[Item], run: Path) -> Child:
        lines = run / "args.txt"
        lines.write_text(
            "".join(f"-F audio=@{i.audio};type={i.content_type} -F metadata=<{i.sidecar}\n" for i in items)
        )
        auth = f"Authorization: Bearer {API_KEY}"
        argv = ["xargs", "-P", str(workers), "-L", "1", *CURL, "-H", auth, ctx.sink.upload_url]
        return Child(argv, stdin=lines, tree=True)

    return start


def curl_keepalive(ctx: Context, items: list[Item], run: Path) -> Child:
    """One curl, one connection, every transfer in a row (`next` between them): the machine's limit."""
    blocks = [
        f'url = "{ctx.sink.upload_url}"\nheader = "Authorization: Bearer {API_KEY}"\n'
        f'form = "audio=@{i.audio};type={i.content_type}"\nform = "metadata=<{i.sidecar}"\n'
        'output = "/dev/null"\nfail\nsilent\nshow-error\n'
        for i in items
    ]
    config = run / "curl.cfg"
    config.write_text("next\n".join(blocks))
    return Child(["curl", "-K", str(config)])


def httpx_pool(ctx: Context, items: list[Item], run: Path) -> Child:
    listing = _listing(items, run / "list.tsv")
    return Child([sys.executable, "-m", "bench.httpx_baseline", ctx.sink.upload_url, API_KEY, str(listing), "4"])


def write_config(run: Path, sink: Sink, *, workers: int | str, settle: float = 0.0, log_level: str = "info") -> Path:
    spool = run / "spool"
    run.mkdir(parents=True, exist_ok=True)
    config = run / "config.toml"
    config.write_text(
        f'[api]\nbase_url = "{sink.base_url}"\ntenant_id = "{TENANT}"\n'
        f'[folders]\ninbox = "{spool / "inbox"}"\ndone = "{spool / "done"}"\nfailed = "{spool / "failed"}"\n'
        'instance = "bench"\n'
        f'[ledger]\npath = "{run / "ledger.sqlite3"}"\n'
        f"[upload]\nworkers = {workers if isinstance(workers, int) else repr(workers)}\n"
        f"[watch]\nsettle_seconds = {settle}\n"
        "[status]\npoll = false\n"
        f'[log]\nlevel = "{log_level}"\nformat = "json"\n'
    )
    return config


def count_audio(folder: Path) -> int:
    try:
        return sum(1 for name in os.listdir(folder) if name.endswith(AUDIO_SUFFIXES))
    except FileNotFoundError:
        return 0


def vocwatch_daemon(workers: int | str) -> Callable[[Context, list[Item], Path], Child]:
    def start(ctx: Context, items: list[Item], run: Path) -> Child:
        config = write_config(run, ctx.sink, workers=workers)
        link_into(items, run / "spool" / "inbox")
        return Child([*VOCWATCH, "run", "--config", config], env={"VOCWATCH_API_KEY": API_KEY}, stdout=run / "log")

    return start


def vocwatch_upload(ctx: Context, items: list[Item], run: Path) -> Child:
    config = write_config(run, ctx.sink, workers=4)
    inbox = run / "spool" / "inbox"
    link_into(items, inbox)
    argv = [*VOCWATCH, "upload", "--config", config, "--no-progress", inbox]
    return Child(argv, env={"VOCWATCH_API_KEY": API_KEY}, stdout=run / "log")


TOOLS: dict[str, tuple[str, Callable[[Context, list[Item], Path], Child]]] = {
    # name: (kind, starter); kind "limit" is the machine's limit, "baseline" competes, "vocwatch" is us
    "curl keep-alive (limit)": ("limit", curl_keepalive),
    "curl loop": ("baseline", curl_sequential),
    "xargs -P4 curl": ("baseline", curl_xargs(4)),
    "xargs -P8 curl": ("baseline", curl_xargs(8)),
    "httpx pool(4)": ("baseline", httpx_pool),
    "vocwatch run w4": ("vocwatch", vocwatch_daemon(4)),
    "vocwatch run w8": ("vocwatch", vocwatch_daemon(8)),
    "vocwatch upload": ("vocwatch", vocwatch_upload),
    "vocwatch run auto": ("vocwatch", vocwatch_daemon("auto")),  # upload.workers = "auto", against w4 and w8
    # The slow API's rows (bench/slow.py), not in the throughput table: many at a time against slow replies.
    "xargs -P32 curl": ("baseline", curl_xargs(32)),
    "vocwatch run w32": ("vocwatch", vocwatch_daemon(32)),
    "vocwatch run w64": ("vocwatch", vocwatch_daemon(64)),
}
SLOW = ("xargs -P32 curl", "vocwatch run w32", "vocwatch run w64")
THROUGHPUT = tuple(t for t in TOOLS if t not in SLOW)


def run_tool(ctx: Context, tool: str, cls: str, items: list[Item]) -> Result:
    kind, starter = TOOLS[tool]
    run = ctx.work / "runs" / re.sub(r"[^a-z0-9]+", "-", f"{cls}-{tool}".lower()).strip("-")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    offset = ctx.sink.offset()
    launched = time.time()
    child = starter(ctx, items, run)
    note = ""
    if tool.startswith("vocwatch run"):
        done, failed = run / "spool" / "done", run / "spool" / "failed"
        at = child.wait_until(lambda: count_audio(done) >= len(items) or count_audio(failed) > 0, ctx.timeout_s)
        measured: Measured = child.finish(terminate=True)
        if at is None or count_audio(done) < len(items):
            note = f"only {count_audio(done)}/{len(items)} in done/ ({count_audio(failed)} failed)"
        else:
            measured.wall_s = at
    else:
        measured = child.finish(timeout=ctx.timeout_s)
        if measured.returncode != 0:
            note = f"exit status {measured.returncode}"
        if kind == "vocwatch" and count_audio(run / "spool" / "done") < len(items):
            note = f"only {count_audio(run / 'spool' / 'done')}/{len(items)} in done/"
    size = sum(i.size for i in items)
    result = Result(tool, cls, len(items), size, measured.wall_s, measured.cpu_s, measured.peak_mb)
    result.extra["sys_s"] = round(measured.sys_s, 3)
    _check_with_sink(ctx.sink, offset, launched, result)
    if note:
        result.ok, result.note = False, "; ".join(x for x in (note, result.note) if x)
    if result.ok:
        shutil.rmtree(run, ignore_errors=True)
    return result


def _check_with_sink(sink: Sink, offset: int, launched: float, result: Result) -> None:
    if not sink.timestamps:
        return
    arrivals = sink.arrivals(offset)
    if not arrivals:
        result.ok, result.note = False, "the sink saw no request"
        return
    result.first_upload_s = min(a.start for a in arrivals) - launched
    result.connections = len({a.connection for a in arrivals})
    result.sink_bytes = sum(a.length for a in arrivals)
    bad = [a for a in arrivals if a.status != 202]
    if len(arrivals) != result.files or bad or result.sink_bytes < result.bytes:
        result.ok = False
        result.note = (
            f"sink saw {len(arrivals)} requests for {result.files} files, {len(bad)} not 202, "
            f"{result.sink_bytes} of {result.bytes} bytes"
        )
