"""``python -m bench``: vocwatch against curl, xargs and httpx, and against the machine's limit.

Prints a table and the targets (PASS/MISS), and writes bench/results.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import audio_check, fleet_cost, ledger_bench, report, slow
from bench.corpus import CLASSES, ensure_corpus
from bench.proc import stop_all
from bench.sink import Sink, start_python, start_sink
from bench.timed import backlog, latency, startup
from bench.tools import THROUGHPUT, Context, Result, run_tool

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Plan:
    repeats: int
    files: dict[str, int]  # files used per class
    drops: int
    backlog: int
    marks: tuple[int, int]
    slow_files: int = 480  # small files sent to the slow API (32 at a time, 200 ms a reply: ~3 s a run)


FULL = Plan(3, {c: n for c, (n, _) in CLASSES.items()}, 200, 100_000, (1_000, 10_000))
QUICK = Plan(1, {"small": 200, "medium": 60, "large": 20}, 100, 20_000, (1_000, 5_000), 320)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer files, one repeat, 100 drops, a 20,000-pair backlog")
    p.add_argument("--repeats", type=int, help="runs per tool and class; the median run is reported")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated: small,medium,large")
    p.add_argument("--tools", help="comma-separated substrings of tool names to run (default: all)")
    p.add_argument("--sink", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument("--backlog", type=int, help="pairs in the start-up backlog (0: skip)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-slow", action="store_true", help="skip the slow-API rows (200 ms replies, 32 at a time)")
    p.add_argument(
        "--ledger-rows", type=int, help="rows of the ledger query row (default 10,000,000; --quick 1,000,000; 0: skip)"
    )
    p.add_argument("--work", type=Path, default=HERE / "work", help="corpus and scratch folder")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    return p.parse_args(argv)


class _Say:
    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=sys.stderr, flush=True)


def _median(runs: list[Result]) -> Result:
    ok = [r for r in runs if r.ok] or runs
    chosen = sorted(ok, key=lambda r: r.wall_s)[(len(ok) - 1) // 2]
    chosen.extra["walls_s"] = [round(r.wall_s, 3) for r in runs]
    return chosen


def _throughput(
    ctx: Context,
    corpus: dict[str, Any],
    plan: Plan,
    args: argparse.Namespace,
    say: _Say,
    all_runs: list[dict[str, Any]],
) -> dict[str, dict[str, Result]]:
    tools = [t for t in THROUGHPUT if not args.tools or any(s.strip() in t for s in args.tools.split(","))]
    by_class: dict[str, dict[str, Result]] = {}
    for cls in [c for c in args.classes.split(",") if c in CLASSES]:
        items = corpus[cls][: plan.files[cls]]
        run_tool(ctx, "curl keep-alive (limit)", cls, items)  # warm-up: page cache, sink buffers
        runs: dict[str, list[Result]] = {t: [] for t in tools}
        for rep in range(args.repeats or plan.repeats):
            for tool in tools:  # interleaved, so drift on a shared machine hits every tool alike
                result = run_tool(ctx, tool, cls, items)
                runs[tool].append(result)
                all_runs.append({"repeat": rep, **result.as_dict()})
                flag = "" if result.ok else f"  FAILED: {result.note}"
                say(f"{cls:<6} {tool:<25} {result.files_s:8.1f} files/s {result.mb_s:8.1f} MB/s{flag}")
        by_class[cls] = {t: _median(rs) for t, rs in runs.items()}
    return by_class


def _compile_vocwatch() -> Path | None:
    """Compile this checkout's vocwatch to bytecode, as the .deb does at build: where PYTHONDONTWRITEBYTECODE
    is set (a sandbox, a CI image) every launch would otherwise compile its ~55 modules from source, some
    60 ms of each READY that no deployed daemon pays. None when vocwatch is not importable from here."""
    spec = importlib.util.find_spec("vocwatch")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    compileall.compile_dir(package, quiet=1)
    return package


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    plan = QUICK if args.quick else FULL
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    say = _Say()
    compiled = _compile_vocwatch()
    if compiled:
        say(f"vocwatch's bytecode compiled under {compiled} (as the package ships it)")
    corpus, gen_s = ensure_corpus(work / "corpus")
    say(f"corpus {'generated in %.1f s' % gen_s if gen_s else 'reused'} under {work / 'corpus'}")  # noqa: UP031
    sink = start_sink(work / "sink", prefer=args.sink, install=not args.no_install)
    say(f"sink: {sink.kind} at {sink.base_url} ({sink.detail})")
    structure = audio_check.measure(work / "audio")
    say(audio_check.line(structure))
    fleet = fleet_cost.measure()
    say(fleet_cost.line(fleet))
    timed_sink: Sink | None = sink if sink.timestamps else None
    all_runs: list[dict[str, Any]] = []
    lat = back = start = book = slow_api = None
    pairs = plan.backlog if args.backlog is None else args.backlog
    try:
        by_class = _throughput(Context(sink, work), corpus, plan, args, say, all_runs)
        if timed_sink is None and (pairs or not args.no_latency or by_class):
            timed_sink = start_python(work / "pysink", logged=True)
        start = startup(timed_sink, work)
        say(f"start-up on an empty inbox: READY after {start['ready_s']} s, {start['cpu_s']} s CPU")
        report.net_of_startup(by_class, start)
        if not args.no_slow:
            slow_api = slow.measure(work, corpus["small"][: plan.slow_files], repeats=args.repeats or plan.repeats)
            say(slow.line(slow_api))
        if not args.no_latency:
            lat = latency(timed_sink, work, corpus["small"][: plan.drops])
            say(f"latency: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms over {lat['measured']} drops")
        if pairs:
            back = backlog(timed_sink, work, pairs, plan.marks)
            say(f"backlog {pairs:,}: first upload after {back['first_upload_s']} s, peak {back['peak_rss_mb']} MB")
        rows = (1_000_000 if args.quick else 10_000_000) if args.ledger_rows is None else args.ledger_rows
        if rows:
            book = ledger_bench.run(work / "ledger", rows)
            say(f"ledger {rows:,} rows: list --since 1h {book['list_since_1h_ms']} ms, show {book['show_ms']} ms")
    finally:
        stop_all()
        if timed_sink is not None and timed_sink is not sink:
            timed_sink.stop()
        sink.stop()

    found = report.targets(by_class, lat, back, book, start, slow_api)
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeats": args.repeats or plan.repeats,
        "machine": report.machine(f"{sink.kind}: {sink.detail}"),
        "corpus": {
            c: {"files": plan.files[c], "bytes": sum(i.size for i in v[: plan.files[c]])} for c, v in corpus.items()
        },
        "throughput": {cls: {t: r.as_dict() for t, r in rs.items()} for cls, rs in by_class.items()},
        "ratios": report.ratios(by_class),
        "startup": start,
        "structure_check": structure,
        "ledger_cost": fleet,
        "latency": lat,
        "slow_api": slow_api,
        "backlog": back,
        "ledger": book,
        "targets": [t.as_dict() for t in found],
        "runs": all_runs,
        "duration_s": round(time.monotonic() - say.began, 1),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report.render(results, by_class, found))
    print(audio_check.line(structure))
    print(fleet_cost.line(fleet))
    if slow_api:
        print(slow.line(slow_api))
    print(f"\nwrote {args.out} in {results['duration_s']} s")
    return 0 if all(r.ok for rs in by_class.values() for r in rs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
