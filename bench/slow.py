"""The slow API: ``vocwatch simulate --sink --latency 0.2`` answers each upload after 200 ms; vocwatch with
``workers = 32`` against ``xargs -P32 curl`` on the same small files, interleaved, median of the repeats.

Also ``python -m bench.slow`` on its own (about 30 s).
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

TOOLS = ("xargs -P32 curl", "vocwatch run w32")


def measure(work: Path, items: list[Item], *, latency_s: float = 0.2, repeats: int = 3) -> dict[str, Any]:
    """files/s and peak RSS of both tools against the slow sink; the median run of each."""
    sink = start_python(work / "slow-sink", logged=False, latency_s=latency_s)
    runs: dict[str, list[Result]] = {t: [] for t in TOOLS}
    try:
        ctx = Context(sink, work)
        for _ in range(repeats):
            for tool in TOOLS:
                runs[tool].append(run_tool(ctx, tool, "small", items))
    finally:
        stop_all()
        sink.stop()
    out: dict[str, Any] = {"latency_s": latency_s, "files": len(items), "sink": sink.kind}
    for tool, results in runs.items():
        ok = sorted((r for r in results if r.ok), key=lambda r: r.wall_s)
        chosen = ok[(len(ok) - 1) // 2] if ok else None
        out[tool] = {
            "files_s": round(chosen.files_s, 1) if chosen else None,
            "peak_mb": round(chosen.peak_mb, 1) if chosen else None,
            "walls_s": [round(r.wall_s, 3) for r in results],
            "failed": [r.note for r in results if not r.ok],
        }
    return out


def line(result: dict[str, Any]) -> str:
    ours, curl = result["vocwatch run w32"], result["xargs -P32 curl"]
    return (
        f"slow API (replies after {result['latency_s'] * 1000:g} ms, {result['files']} small files): "
        f"vocwatch run w32 {ours['files_s']} files/s, peak {ours['peak_mb']} MB; "
        f"xargs -P32 curl {curl['files_s']} files/s, peak {curl['peak_mb']} MB"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slow", description=__doc__)
    p.add_argument("--files", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    args = p.parse_args(argv)
    corpus, _ = ensure_corpus(args.work / "corpus")
    print(line(measure(args.work, corpus["small"][: args.files], latency_s=args.latency, repeats=args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
