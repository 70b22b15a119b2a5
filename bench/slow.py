"""The slow API: ``vocwatch simulate --sink --latency S`` answers each upload after S seconds.

At 200 ms: vocwatch with ``workers = 32`` against ``xargs -P32 curl`` (the issue's target), and
``workers = "auto"`` against the fixed counts 32 and 64; at 1 s: "auto" against 32 and 64. Small files,
interleaved, the median of the repeats. Also ``python -m bench.slow`` on its own (about a minute).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.corpus import Item, ensure_corpus
from bench.proc import stop_all
from bench.sink import start_python
from bench.tools import Context, Result, run_tool

PLAN: dict[float, tuple[str, ...]] = {
    0.2: ("xargs -P32 curl", "vocwatch run w32", "vocwatch run w64", "vocwatch run auto"),
    1.0: ("vocwatch run w32", "vocwatch run w64", "vocwatch run auto"),
}


def _median(results: list[Result]) -> dict[str, Any]:
    ok = sorted((r for r in results if r.ok), key=lambda r: r.wall_s)
    chosen = ok[(len(ok) - 1) // 2] if ok else None
    return {
        "files_s": round(chosen.files_s, 1) if chosen else None,
        "peak_mb": round(chosen.peak_mb, 1) if chosen else None,
        "walls_s": [round(r.wall_s, 3) for r in results],
        "failed": [r.note for r in results if not r.ok],
    }


def measure(work: Path, items: list[Item], *, repeats: int = 3) -> dict[str, Any]:
    """Per latency, files/s and peak RSS of each tool against the slow sink, launch to the last in done/."""
    out: dict[str, Any] = {"files": len(items), "latencies": {}}
    for latency_s, tools in PLAN.items():
        files = items
        sink = start_python(work / "slow-sink", logged=False, latency_s=latency_s)
        runs: dict[str, list[Result]] = {t: [] for t in tools}
        try:
            ctx = Context(sink, work)
            for _ in range(repeats):
                for tool in tools:
                    runs[tool].append(run_tool(ctx, tool, "small", files))
        finally:
            stop_all()
            sink.stop()
        out["sink"] = sink.kind.split(" --latency")[0]
        out["latencies"][str(latency_s)] = {"files": len(files), **{t: _median(rs) for t, rs in runs.items()}}
    return out


def line(result: dict[str, Any]) -> str:
    parts = []
    for latency, rows in result["latencies"].items():
        tools = ", ".join(
            f"{t.removeprefix('vocwatch run ')} {r['files_s']} files/s ({r['peak_mb']} MB)"
            for t, r in rows.items()
            if t != "files"
        )
        parts.append(f"{float(latency) * 1000:g} ms, {rows['files']} small files: {tools}")
    return "slow API (" + result.get("sink", "simulator") + "): " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slow", description=__doc__)
    p.add_argument("--files", type=int, default=480)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    args = p.parse_args(argv)
    corpus, _ = ensure_corpus(args.work / "corpus")
    print(line(measure(args.work, corpus["small"][: args.files], repeats=args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
