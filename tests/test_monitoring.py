"""The operator's toolbox: every metric the alert rules and the Grafana dashboard query is really served.

A real daemon with metrics.listen on a loopback port is driven through an accepted upload, a refused key,
a failed job and an invalid id; its /metrics is scraped and every PromQL query in
deploy/prometheus/vocwatch.rules.yml and deploy/grafana/vocwatch.json is checked against it: each metric
name is served, each label it names exists on it, and each label value it matches on is one it takes.
promql-parser also type-checks each query (rate() of an instant vector is refused, as Prometheus would).
The rules' behaviour itself is unit-tested by promtool (make alerts-test).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import promql_parser as pp
import pytest
import yaml
from conftest import Spool, drop, running, wait_for
from prometheus_client.parser import text_string_to_metric_families

from vocwatch.core.reasons import Reason
from vocwatch.edges.stats import Stats
from vocwatch.testing.samples import write_wav
from vocwatch.testing.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "vocwatch.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vocwatch.json"
# Series that Prometheus adds to each scrape itself: never on vocwatch's /metrics.
SCRAPE_SERIES = frozenset({"up"})
# Served only by a daemon on the fleet ledger (PostgreSQL); test_fleet_only_metrics_are_served_by_a_fleet_daemon.
FLEET_ONLY = frozenset({"vocwatch_ledger_reachable", "vocwatch_lease_held"})
# Labels that Prometheus attaches to every scraped series (the target's).
TARGET_LABELS = frozenset({"instance", "job"})
# Grafana's interval variables stand where PromQL wants a duration; any other variable is a label value.
GRAFANA_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
INTERVALS = frozenset({"__rate_interval", "__interval", "__range"})
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True, slots=True)
class Query:
    where: str  # which rule or panel, for the failure message
    expr: str  # PromQL (Grafana variables replaced)


@dataclass(frozen=True, slots=True)
class Uses:
    """What one PromQL expression names: metrics, label names, and (metric, label, op, value) matchers."""

    metrics: frozenset[str]
    labels: frozenset[str]
    matchers: frozenset[tuple[str, str, str, str]]  # op: "=", "=~" or "other" (!=, !~)


def uses(expr: str) -> Uses:
    """Parse ``expr`` (promql-parser) and collect the names it uses; functions and keywords are not names."""
    metrics: set[str] = set()
    labels: set[str] = set()
    matchers: set[tuple[str, str, str, str]] = set()

    def visit(node: pp.Expr) -> None:
        if isinstance(node, pp.VectorSelector):
            found = [m for m in node.matchers.matchers if m.name != "__name__"]
            named = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            name = node.name or (named[0] if named else None)
            assert name, f"a selector without a metric name: {node}"
            metrics.add(name)
            labels.update(m.name for m in found)
            matchers.update((name, m.name, _op(m), m.value) for m in found)
        elif isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, pp.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or [])

    pp.walk(pp.parse(expr), pre_visit=visit)
    return Uses(frozenset(metrics), frozenset(labels), frozenset(matchers))


def _op(matcher: pp.Matcher) -> str:
    # MatchOp is not hashable: compared, not looked up.
    return "=" if matcher.op == pp.MatchOp.Equal else "=~" if matcher.op == pp.MatchOp.Re else "other"


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus would get it: intervals as durations, other variables as a value."""
    return GRAFANA_VARIABLE.sub(lambda m: "5m" if (m[1] or m[2]) in INTERVALS else "grafana_variable", expr)


def rule_queries() -> list[Query]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [Query(f"rule {r.get('alert') or r['record']}", r["expr"]) for g in groups for r in g["rules"]]


def dashboard_queries() -> list[Query]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in _panels(board):
        for target in panel.get("targets", []):
            found.append(Query(f"panel {panel['title']!r} {target['refId']}", grafana_to_promql(target["expr"])))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: only label_values(QUERY, LABEL) is understood here"
            expr = grafana_to_promql(match["expr"])
            found.append(Query(f"variable {variable['name']}", f"sum by ({match['label']}) ({expr})"))
    return found


def _panels(board: dict[str, object]) -> list[dict[str, object]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in board["panels"]:  # type: ignore[attr-defined]
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


Served = dict[str, dict[str, set[str]]]  # sample name -> label -> values seen


def scrape(listen: str) -> Served:
    served: defaultdict[str, defaultdict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(httpx.get(f"http://{listen}/metrics", timeout=5).text):
        for sample in family.samples:
            labels = served[sample.name]
            for key, value in sample.labels.items():
                labels[key].add(value)
    return {name: dict(labels) for name, labels in served.items()}


def problems(query: Query, served: Served, exempt: frozenset[str]) -> list[str]:
    """What in ``query`` a daemon serving ``served`` would leave empty: unknown metrics, labels or values."""
    used = uses(query.expr)
    out = [f"{query.where}: {m} is not served" for m in sorted(used.metrics - served.keys() - exempt)]
    known = set(TARGET_LABELS).union(*(served[m].keys() for m in used.metrics if m in served))
    out += [f"{query.where}: no metric it names has the label {label!r}" for label in sorted(used.labels - known)]
    for metric, label, op, value in sorted(used.matchers, key=str):
        if label in TARGET_LABELS or metric not in served:
            continue
        if op == "=":
            wanted = [value]
        elif op == "=~" and re.fullmatch(r"[\w|]+", value):
            wanted = value.split("|")
        else:
            continue  # a negative or a real regular expression: nothing it must find
        values = served[metric].get(label, set())
        out += [f"{query.where}: {metric}{{{label}={w!r}}} is never served" for w in wanted if w not in values]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the checker itself ----------------------------------------------------------------------------


def test_the_extractor_finds_metrics_not_functions_keywords_or_labels() -> None:
    used = uses(
        'sum without (reason) (increase(vocwatch_failures_total{reason="invalid_id", job=~"v.*"}[1h])) '
        "/ ignoring(reason) group_left(outcome) sum by (outcome) (rate(vocwatch_uploads_total[5m] offset 1h)) "
        "> bool 0.1 and on(instance) deriv((vocwatch_pending_files + vocwatch_queue_depth)[1h:1m]) > 0 "
        'or time() - {__name__="vocwatch_start_time_seconds"} unless absent(up) or vector(1)'
    )
    assert used.metrics == {
        "vocwatch_failures_total",
        "vocwatch_uploads_total",
        "vocwatch_pending_files",
        "vocwatch_queue_depth",
        "vocwatch_start_time_seconds",
        "up",
    }
    assert used.labels == {"reason", "job", "outcome", "instance"}
    assert ("vocwatch_failures_total", "reason", "=", "invalid_id") in used.matchers
    assert ("vocwatch_failures_total", "job", "=~", "v.*") in used.matchers
    assert grafana_to_promql('rate(x{instance=~"$instance"}[$__rate_interval])') == (
        'rate(x{instance=~"grafana_variable"}[5m])'
    )


def test_the_checker_reports_a_missing_metric_label_and_value() -> None:
    served: Served = {"vocwatch_uploads_total": {"outcome": {"done", "failed"}}}
    bad = Query("q", 'sum by (reason) (vocwatch_uploads_total{outcome=~"done|accepted"}) + vocwatch_nope')
    assert problems(bad, served, frozenset()) == [
        "q: vocwatch_nope is not served",
        "q: no metric it names has the label 'reason'",
        "q: vocwatch_uploads_total{outcome='accepted'} is never served",
    ]
    assert problems(Query("q", 'vocwatch_uploads_total{outcome="done", instance="x"}'), served, frozenset()) == []


# -- the metrics the rules need ----------------------------------------------------------------------


def test_failures_are_counted_by_reason_and_every_series_starts_at_zero() -> None:
    stats = Stats()
    stats.finished("failed", reason=Reason.INVALID_ID)
    stats.failed(Reason.JOB_FAILED)  # a job that failed after acceptance: not a worker outcome
    stats.finished("done", nbytes=10, seconds=0.5)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in stats.registry.collect()
        for s in family.samples
    }
    assert values[("vocwatch_failures_total", (("reason", "invalid_id"),))] == 1
    assert values[("vocwatch_failures_total", (("reason", "job_failed"),))] == 1
    assert values[("vocwatch_failures_total", (("reason", "too_large"),))] == 0
    assert {r for (n, labels), _ in values.items() if n == "vocwatch_failures_total" for _, r in labels} == set(Reason)
    assert values[("vocwatch_uploads_total", (("outcome", "failed"),))] == 1
    assert values[("vocwatch_uploads_total", (("outcome", "duplicate"),))] == 0
    assert time.time() - 60 < values[("vocwatch_start_time_seconds", ())] <= time.time()
    assert values[("vocwatch_start_time_seconds", ())] <= values[("vocwatch_last_success_timestamp_seconds", ())]


# -- against a running daemon --------------------------------------------------------------------------


def test_every_metric_of_the_rules_and_the_dashboard_is_served(spool: Spool, sim: Simulator, make_settings) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    settings = make_settings(metrics__listen=listen, folders__done_after="completed", watch__pair_timeout_seconds=1)
    sim.state.faults.unauthorized_until = time.monotonic() + 60
    with running(settings):
        drop(spool.inbox, "ok.wav", "mon-ok")
        wait_for(lambda: "vocwatch_auth_paused 1.0" in httpx.get(f"http://{listen}/metrics").text, what="auth paused")
        sim.state.faults.unauthorized_until = 0.0
        wait_for(lambda: (spool.done / "ok.wav").exists(), what="the first pair in done/")
        sim.state.faults.job_fail_rate = 1.0
        drop(spool.inbox, "job.wav", "mon-job")
        drop(spool.inbox, "bad.wav", "bad id!")
        wait_for(lambda: (spool.failed / "job.error.json").exists(), what="the failed job in failed/")
        wait_for(lambda: (spool.failed / "bad.error.json").exists(), what="the invalid id in failed/")
        write_wav(spool.inbox / "lone.wav", seconds=0.05)  # its sidecar never comes: failed before any claim
        wait_for(lambda: (spool.failed / "lone.error.json").exists(), what="the lone recording in failed/")
        served = scrape(listen)
        body = httpx.get(f"http://{listen}/metrics").text
        spool.inbox.rename(spool.root / "inbox-gone")  # a share that dropped: VocwatchWatcherUnhealthy's gauge
        wait_for(lambda: "vocwatch_watcher_healthy 0.0" in httpx.get(f"http://{listen}/metrics").text, what="0")
    for line in (
        'vocwatch_failures_total{reason="invalid_id"} 1.0',
        'vocwatch_failures_total{reason="job_failed"} 1.0',
        'vocwatch_failures_total{reason="missing_sidecar"} 1.0',
        'vocwatch_uploads_total{outcome="failed"} 1.0',
        'vocwatch_uploads_total{outcome="done"} 2.0',
        "vocwatch_auth_paused 0.0",
        "vocwatch_watcher_healthy 1.0",
        "vocwatch_workers 2.0",
        "vocwatch_backoff_seconds 0.0",
    ):
        assert line in body, line
    queries = rule_queries() + dashboard_queries()
    assert len(rule_queries()) >= 9 and len(dashboard_queries()) >= 20, "the files were not read"
    found = [p for q in queries for p in problems(q, served, SCRAPE_SERIES | FLEET_ONLY)]
    assert found == [], "\n".join(found)
    assert not FLEET_ONLY & served.keys(), "a daemon on SQLite serves a fleet-only metric: drop it from FLEET_ONLY"
    named = set().union(*(uses(q.expr).metrics for q in queries))
    assert named >= FLEET_ONLY and named >= SCRAPE_SERIES, "an exemption no query needs: drop it"


@pytest.mark.fleet
def test_fleet_only_metrics_are_served_by_a_fleet_daemon(
    spool: Spool, sim: Simulator, make_settings, pg_url: str
) -> None:
    listen = f"127.0.0.1:{_free_port()}"
    with running(make_settings(metrics__listen=listen, ledger__url=pg_url)):
        served = scrape(listen)
    assert served.keys() >= FLEET_ONLY
    queries = [q for q in rule_queries() + dashboard_queries() if uses(q.expr).metrics & FLEET_ONLY]
    found = [p for q in queries for p in problems(q, served, SCRAPE_SERIES)]
    assert queries and found == [], "\n".join(found)


# -- the dashboard imports -------------------------------------------------------------------------------


def test_the_dashboard_imports_into_grafana_10_with_its_datasource_as_an_input() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    assert board["schemaVersion"] >= 38 and board["uid"] and board["title"]  # 38: Grafana 10.0
    requires = {r["id"] for r in board["__requires"] if r["type"] == "panel"}
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in requires, f"panel type {panel['type']} missing from __requires"
        assert panel["description"], f"panel {panel['title']!r}: say what it shows and what to do"
        sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources), panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"
