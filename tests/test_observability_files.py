"""The shipped alert rules and Grafana dashboard (deploy/): Prometheus's own `promtool`
checks the rules and the dashboard's queries and runs the alert cases, and every metric a
rule or a panel names is exported by a running stack (real Redis, the session's real
worker, a scrape of `broadcast metrics serve`) or is one of the documented external
metrics (redis_exporter's, Flower's, Prometheus's `up`).

promtool comes from Debian's `prometheus` package (`make setup` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from harness.metrics_server import MetricsServer
from harness.samples import chat_event
from harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "broadcast-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "broadcast-dashboard.json"
CASES = Path(__file__).parent / "promtool" / "alert-cases.yml"
PRODUCTION = ROOT / "docs" / "production.md"
# Metrics the rules and panels read from other exporters, each documented in
# docs/production.md ("Metrics"): Broadcast does not export them.
EXTERNAL = {
    "redis_memory_used_bytes": "redis_exporter",
    "redis_memory_max_bytes": "redis_exporter",
    "redis_instance_info": "redis_exporter",
    "redis_evicted_keys_total": "redis_exporter",
    "flower_worker_online": "Flower",
    "up": "Prometheus",
}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "bool", "offset", "inf", "nan", "le"}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (make setup does)"
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]  # fmt: skip


def panels() -> list[dict]:
    """Every panel of the dashboard, those inside collapsed rows too."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def as_prometheus(expr: str) -> str:
    """A panel's query with Grafana's variables replaced, as Prometheus receives it."""
    return expr.replace("$__rate_interval", "5m").replace("$type", ".*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, keywords, labels)."""
    expr = as_prometheus(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0) not in PROMQL_WORDS:
            names.add(match.group(0))
    return names


def named_metrics() -> dict[str, str]:
    """Metric name -> the first rule or panel that names it."""
    named: dict[str, str] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            named.setdefault(name, f"alert {rule['alert']}")
    for panel in panels():
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                named.setdefault(name, f"panel {panel['title']!r}")
    return named


def test_the_metric_name_reader_reads_promql():
    assert metric_names(
        'histogram_quantile(0.95, sum by (type, le) (rate(a_bucket{type=~"$type"}'
        "[$__rate_interval]))) / ignoring(x) b_total offset 5m and on(q) time() - c > 1e3"
    ) == {"a_bucket", "b_total", "c"}


def test_alert_rules_pass_promtool():
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise():
    """promtool's unit tests (tests/promtool/alert-cases.yml) with synthetic series."""
    result = subprocess.run([promtool(), "test", "rules", CASES.name], cwd=CASES.parent,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_what_an_operator_must_hear_of():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    wanted = {
        "backlog age": "broadcast_backlog_oldest_age_seconds",
        "circuit open": "broadcast_destination_circuit_open",
        "auth failed": 'broadcast_destination_health{status="auth_failed"}',
        "dead letters growing": 'broadcast_destination_traces_total{outcome="failed"}',
        "no worker": "broadcast_queue_consumers == 0",
        "beat stale": "broadcast_beat_last_sweep_timestamp_seconds",
        "Redis memory against maxmemory": "redis_memory_used_bytes / redis_memory_max_bytes",
        "oldest fan-out message":
            'broadcast_queue_oldest_message_age_seconds{queue="broadcast.fanout"}',
    }  # fmt: skip
    for what, fragment in wanted.items():
        assert any(fragment in expr for expr in exprs.values()), f"no alert on {what}"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_runbook_links_point_at_headings():
    for rule in alert_rules():
        runbook = rule["annotations"].get("runbook")
        if runbook is None:
            continue
        path, _, anchor = runbook.partition("#")
        headings = [line.lstrip("#").strip() for line in (ROOT / path).read_text().splitlines()
                    if line.startswith("#")]  # fmt: skip
        slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
        assert anchor in slugs, f"{rule['alert']}: no heading #{anchor} in {path}"


def test_dashboard_queries_parse(tmp_path):
    """Each panel's query, checked by promtool as a recording rule's expression."""
    queries = panel_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": as_prometheus(query)}
        for index, query in enumerate(queries)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_is_a_grafana_dashboard_on_a_chosen_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "Broadcast"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_no_other_alert_or_rule_file_sorts_before_the_alerts_file():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    candidates = sorted(
        path for path in tracked
        if path.endswith((".yml", ".yaml")) and re.search(r"alert|rule", Path(path).name)
    )  # fmt: skip
    assert candidates and candidates[0] == "deploy/prometheus/broadcast-alerts.yml", candidates


@pytest.fixture(scope="module")
def metrics(redis_server, workdir) -> Iterator[MetricsServer]:
    server = MetricsServer(os.environ, workdir, "metrics-observability")
    yield server
    server.stop()


def test_every_metric_a_rule_or_panel_names_is_exported(
    metrics, worker, service, user_id, receiver
):
    """Against a running stack, after a real delivery: the scrape's families (by their
    `# TYPE` names; a histogram's `_bucket`, `_count` and `_sum` series with it)."""
    from tasks import broadcast

    sink = receiver()
    owner = f"user:{user_id}"
    dest = service.add_destination(owner, "webhook", "observed", {"url": sink.url + "/in"})
    broadcast.delay(chat_event(0, user_id=user_id, id=f"{user_id}-o0"))
    wait_for(lambda: service.store.counters(dest["id"])["delivered"] == 1, timeout=30)

    text = requests.get(metrics.url, timeout=10).text
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported.add(name)
            if kind == "histogram":
                exported.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    named = named_metrics()
    missing = {
        name: where for name, where in named.items()
        if name not in exported and name not in EXTERNAL
    }  # fmt: skip
    assert missing == {}, f"named but not exported: {missing}"
    assert {name for name in named if name.startswith("broadcast_")} <= exported
    # The external ones are documented where an operator sets up their exporters.
    production = PRODUCTION.read_text()
    for name in (n for n in named if n in EXTERNAL):
        assert f"`{name}`" in production, f"{name} ({EXTERNAL[name]}) is not in production.md"
