"""Targets, the printed table and the machine's description for bench/results.json."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bench.tools import TOOLS, Result

CURLS = ("curl loop", "xargs -P4 curl", "xargs -P8 curl")
DAEMONS = ("vocwatch run w4", "vocwatch run w8")
LIMIT = "curl keep-alive (limit)"
BARE = "httpx pool(4)"


@dataclass
class Target:
    name: str
    value: float | None
    goal: str
    passed: bool | None  # None: not measured
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.name, "value": self.value, "goal": self.goal, "pass": self.passed, "detail": self.detail}


def _best(results: dict[str, Result], names: tuple[str, ...]) -> Result | None:
    ok = [results[n] for n in names if n in results and results[n].ok]
    return max(ok, key=lambda r: r.files_s) if ok else None


def _x(a: Result | None, b: Result | None, steady: bool = False) -> float | None:
    if a is None or b is None or not a.ok or not b.ok:
        return None
    num, den = (a.steady_files_s, b.steady_files_s) if steady else (a.files_s, b.files_s)
    return round(num / den, 2) if den else None


def ratios(by_class: dict[str, dict[str, Result]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per class and tool: files/s over the best curl baseline's, bare httpx's and the limit's."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for cls, results in by_class.items():
        curl, bare, limit = _best(results, CURLS), results.get(BARE), results.get(LIMIT)
        out[cls] = {
            tool: {
                "vs_best_curl": _x(r, curl),
                "vs_httpx": _x(r, bare),
                "vs_limit": _x(r, limit),
                "steady_vs_best_curl": _x(r, curl, steady=True),
                "steady_vs_httpx": _x(r, bare, steady=True),
            }
            for tool, r in results.items()
        }
    return out


def net_of_startup(by_class: dict[str, dict[str, Result]], start: dict[str, Any]) -> None:
    """For daemon rows: CPU s/GB without the CPU that starting and stopping an idle daemon costs."""
    for results in by_class.values():
        for tool in DAEMONS:
            r = results.get(tool)
            if r is not None and r.bytes:
                r.extra["cpu_s_per_gb_net"] = round(max(0.0, r.cpu_s - start["cpu_s"]) / (r.bytes / 1e9), 2)


def _ratio_target(name: str, ours: Result | None, base: Result | None, factor: float, *, steady: bool) -> Target:
    """ours / base files/s (``steady``: from the first request at the sink, start-up left out) >= factor."""
    if ours is None or base is None:
        return Target(name, None, f">= {factor:g}x", None, "not measured")
    a, b = (ours.steady_files_s, base.steady_files_s) if steady else (ours.files_s, base.files_s)
    value = a / b if b else 0.0
    detail = f"{ours.tool} {a:.1f} vs {base.tool} {b:.1f} files/s" + (" (steady)" if steady else " (from launch)")
    return Target(name, round(value, 2), f">= {factor:g}x", value >= factor, detail)


def _best_steady(results: dict[str, Result], names: tuple[str, ...]) -> Result | None:
    ok = [results[n] for n in names if n in results and results[n].ok]
    return max(ok, key=lambda r: r.steady_files_s) if ok else None


def targets(
    by_class: dict[str, dict[str, Result]],
    latency: dict[str, Any] | None,
    backlog: dict[str, Any] | None,
    ledger: dict[str, Any] | None = None,
    startup: dict[str, Any] | None = None,
    slow: dict[str, Any] | None = None,
) -> list[Target]:
    """Every target of the performance issue (README, Benchmarks), then those kept from before it."""
    out: list[Target] = []
    small, medium, large = (by_class.get(c, {}) for c in ("small", "medium", "large"))
    baselines = (*CURLS, BARE)
    for name, results, base, factor in (
        ("steady: small vs bare httpx", small, _best_steady(small, (BARE,)), 0.9),
        ("steady: medium vs best baseline", medium, _best_steady(medium, baselines), 1.0),
        ("steady: large vs best curl", large, _best_steady(large, CURLS), 0.9),
    ):
        if results:
            out.append(_ratio_target(name, _best_steady(results, DAEMONS), base, factor, steady=True))
    ours, curl = _best_steady(large, DAEMONS), _best(large, CURLS)
    if ours and curl:
        net = ours.extra.get("cpu_s_per_gb_net")
        value = (net if net is not None else ours.cpu_s_gb) / curl.cpu_s_gb
        detail = (
            f"{ours.tool} {net} s/GB start-up left out ({ours.cpu_s_gb:.2f} with it) vs {curl.tool} {curl.cpu_s_gb:.2f}"
        )
        out.append(Target("steady: large CPU/GB vs curl's", round(value, 2), "<= 1.3x", value <= 1.3, detail))
    if startup:
        ready_ms = round(startup["ready_s"] * 1000)
        detail = f"{startup['cpu_s']} s CPU, {startup['rss_mb']} MB RSS"
        out.append(Target("launch: READY on an empty inbox", ready_ms, "<= 150 ms", ready_ms <= 150, detail))
    for cls, results in by_class.items():
        if results:
            best = _best(results, baselines)
            out.append(
                _ratio_target(f"launch: {cls} vs best baseline", _best(results, DAEMONS), best, 0.8, steady=False)
            )
    if slow:
        out.extend(_slow_targets(slow))
    out.append(_auto_target(by_class, slow))
    w8 = large.get("vocwatch run w8")
    if w8 is not None:
        out.append(
            Target("peak RSS, 8 workers, 20 MB files", round(w8.peak_mb, 1), "< 100 MB", w8.peak_mb < 100, "VmHWM")
        )
    if backlog:
        peak = backlog.get("peak_rss_mb")
        first = f"first upload after {backlog.get('first_upload_s')} s"
        out.append(
            Target(f"peak RSS, {backlog['pairs']:,}-pair backlog", peak, "< 200 MB", bool(peak and peak < 200), first)
        )
        growth = backlog.get("growth_mb")
        marks = " -> ".join(f"{int(k):,}" for k in backlog.get("rss_mb_at", {}))
        out.append(
            Target(
                f"RSS growth, {marks} uploads",
                growth,
                "< 10 MB",
                None if growth is None else growth < 10,
                f"RSS (MB) at those marks: {backlog.get('rss_mb_at')}",
            )
        )
    if latency:
        every = f"{latency['measured']}/{latency['drops']} drops, one every {latency['interval_ms']:g} ms"
        for q, goal in (("p50", 100), ("p99", 500)):
            value = latency.get(f"{q}_ms")
            passed = None if value is None else value < goal
            out.append(Target(f"latency {q}, rename to upload start", value, f"< {goal} ms", passed, every))
    if ledger:
        worst = max(ledger["list_since_1h_ms"], ledger["show_ms"])
        listed, shown = ledger["list_since_1h_ms"], ledger["show_ms"]
        detail = f"list --since 1h {listed} ms, show {shown} ms (in-process, median of 5)"
        out.append(Target(f"ledger of {ledger['rows']:,} rows: list/show", worst, "< 100 ms", worst < 100, detail))
    return out


def _slow_targets(slow: dict[str, Any]) -> list[Target]:
    rows = slow["latencies"].get("0.2", {})
    ours, curl = rows.get("vocwatch run w32", {}), rows.get("xargs -P32 curl", {})
    a, b = ours.get("files_s"), curl.get("files_s")
    value = round(a / b, 2) if a and b else None
    detail = f"vocwatch run w32 {a} vs xargs -P32 curl {b} files/s, replies after 200 ms"
    peak = ours.get("peak_mb")
    return [
        Target("slow API: w32 vs xargs -P32 curl", value, ">= 0.9x", None if value is None else value >= 0.9, detail),
        Target("slow API: peak RSS, 32 workers", peak, "< 100 MB", None if peak is None else peak < 100, "VmHWM"),
    ]


def _auto_target(by_class: dict[str, dict[str, Result]], slow: dict[str, Any] | None) -> Target:
    """workers = "auto" over the best fixed count, at 0 ms (small files, nginx), 200 ms and 1 s: the worst."""
    name, goal = 'auto: workers = "auto" vs best fixed', ">= 0.8x at 0, 0.2, 1 s"
    found: dict[str, float] = {}
    small = by_class.get("small", {})
    auto, fixed = small.get("vocwatch run auto"), _best_steady(small, DAEMONS)
    if auto is not None and fixed is not None and auto.ok and fixed.steady_files_s:
        found["0 s"] = auto.steady_files_s / fixed.steady_files_s
    for latency, rows in (slow or {}).get("latencies", {}).items():
        counts = [r["files_s"] for t, r in rows.items() if t.startswith("vocwatch run w") and r["files_s"]]
        mine = rows.get("vocwatch run auto", {}).get("files_s")
        if counts and mine:
            found[f"{float(latency):g} s"] = mine / max(counts)
    if not found:
        return Target(name, None, goal, None, "not measured")
    worst = min(found.values())
    detail = ", ".join(f"{k} {v:.2f}x" for k, v in found.items())
    return Target(name, round(worst, 2), goal, worst >= 0.8 and len(found) == 3, detail)


def machine(sink_detail: str) -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "curl": curl,
        "sink": sink_detail,
        "disk_free_gb": round(shutil.disk_usage(".").free / 2**30, 1),
    }


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = (
    ("class", "<7"), ("tool", "<25"), ("files/s", ">9"), ("MB/s", ">8"), ("steady", ">8"), ("CPU s/GB", ">9"),
    ("peak MB", ">8"), ("1st up", ">7"), ("conns", ">6"), ("xcurl", ">6"), ("xhttpx", ">7"), ("xlimit", ">7"),
)  # fmt: skip


def table(by_class: dict[str, dict[str, Result]]) -> str:
    rat = ratios(by_class)
    head = "".join(format(name, spec) for name, spec in COLUMNS)
    lines = [head, "-" * len(head)]
    for cls, results in by_class.items():
        for tool in TOOLS:
            r = results.get(tool)
            if r is None:
                continue
            x = rat[cls][tool]
            cells = (
                cls, tool, f"{r.files_s:.1f}", f"{r.mb_s:.1f}", f"{r.steady_files_s:.1f}", f"{r.cpu_s_gb:.2f}",
                f"{r.peak_mb:.1f}", _f(r.first_upload_s, ".2f"), _f(r.connections, "d"), _f(x["vs_best_curl"], ".2f"),
                _f(x["vs_httpx"], ".2f"), _f(x["vs_limit"], ".2f"),
            )  # fmt: skip
            row = "".join(format(c, spec) for c, (_, spec) in zip(cells, COLUMNS, strict=True))
            lines.append(row + ("" if r.ok else f"  !! {r.note}"))
    return "\n".join(lines)


def render(results: dict[str, Any], by_class: dict[str, dict[str, Result]], found: list[Target]) -> str:
    m = results["machine"]
    out = [
        f"\nvocwatch benchmark {results['date']}{' (QUICK)' if results['quick'] else ''}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}",
        f"sink: {m['sink']}",
        f"median of {results['repeats']} run(s) per row. files/s and MB/s: launch to last upload (for the daemon: "
        "last pair in done/); steady: files/s from the first request at the sink; 1st up: seconds from launch to "
        "the first request; xcurl / xhttpx / xlimit: files/s over the best curl baseline, bare httpx, and one "
        "keep-alive curl.\n",
        table(by_class),
    ]
    start, lat, back = results.get("startup"), results.get("latency"), results.get("backlog")
    if start:
        out.append(
            f"\nvocwatch start-up on an empty inbox: READY after {start['ready_s']} s, {start['cpu_s']} s CPU, "
            f"{start['rss_mb']} MB RSS"
        )
    if lat:
        out.append(
            f"latency, rename into the inbox -> upload start at the sink (settle 0 s): p50 {lat['p50_ms']} ms, "
            f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms over {lat['measured']}/{lat['drops']} drops"
        )
    if back:
        out.append(
            f"backlog of {back['pairs']:,} tiny pairs (1 KB WAVs): first upload after {back['first_upload_s']} s, "
            f"peak RSS {back['peak_rss_mb']} MB, RSS at {back['rss_mb_at']} uploads, "
            f"{back['files_s_between_marks']} files/s between them"
        )
    out.append("")
    for t in found:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[t.passed]
        out.append(f"{verdict}  {t.name:<36} {_f(t.value, 'g'):>7}  (goal {t.goal})  {t.detail}")
    return "\n".join(out)
