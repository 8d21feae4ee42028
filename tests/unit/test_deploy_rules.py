"""deploy/prometheus and deploy/grafana: rules that promtool accepts and passes its unit
tests, a dashboard whose queries parse, and only metric names the service exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tiergate.config import load_config
from tiergate.service import Service

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "tiergate-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "tiergate-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "tiergate.json"

CONFIG = """
service: rules
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.000002
    threshold: 0.9
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
monitor: {enabled: true}
"""

_METRIC = re.compile(r"\btiergate_[a-z0-9_]+")
# Grafana's variables, as a query would see them once it substituted them.
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$slo_p99_ms": "50",
                 "$slo_cost_per_1k": "0.01", "$job": ".*"}  # fmt: skip


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is not None:
        return exe
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is not installed (CI must run it: see .ci/run)")
    pytest.skip("promtool is not installed (apt-get install prometheus)")


def _run(*args: str) -> None:
    p = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return exprs


def _grafana_to_promql(expr: str) -> str:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name the service's /metrics can show (counters with ``_total``)."""
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(CONFIG)
    service = Service.from_config(load_config(path))
    assert service.monitor is not None
    names: set[str] = set()
    for line in service.metrics_text().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "count", "sum"))
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
    service.close()
    return names


def test_promtool_accepts_the_rules() -> None:
    _run(_promtool(), "check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    _run(_promtool(), "test", "rules", str(RULES_TEST))


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as the expression of a recording rule.
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    rules = [{"record": f"dashboard:query{i}", "expr": _grafana_to_promql(e)}
             for i, e in enumerate(exprs)]  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(_promtool(), "check", "rules", str(path))


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    titles = {p["title"] for p in dash["panels"]}
    for signal in ("Requests/s by tier", "Escalation rate", "Cache hit rate",
                   "Request latency p50 / p99", "Cost per 1k requests vs SLO", "Breaker state",
                   "Degraded answers by reason", "Shadow accuracy and lower bound",
                   "Labelled accuracy and lower bound", "Drift alarms", "Thresholds"):  # fmt: skip
        assert signal in titles
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_rules_and_dashboard_name_only_exported_metrics(exported: set[str]) -> None:
    texts = [str(r["expr"]) for r in _rules()] + _dashboard_exprs()
    referenced = {m for t in texts for m in _METRIC.findall(t)}
    assert {"tiergate_drift_alarm", "tiergate_accuracy_target", "tiergate_requests_total",
            "tiergate_request_latency_seconds_bucket"} <= referenced  # fmt: skip
    assert referenced - exported == set()


def test_every_alert_is_labelled_and_explained() -> None:
    alerts = [r for r in _rules() if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert {"TiergateLatencyP99OverSLO", "TiergateAvailabilityBelowSLO", "TiergateBreakerOpen",
            "TiergateDriftAlarm", "TiergateShadowAccuracyBelowTarget",
            "TiergateLabelledAccuracyBelowTarget", "TiergateHighDegradedRate",
            "TiergateNotReady"} <= names  # fmt: skip
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert names <= tested
    for a in alerts:
        assert a["labels"]["severity"] in ("page", "ticket"), a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
