"""The monitoring assets in deploy/: Prometheus scrape config, recording and alerting rules (checked
and unit-tested with promtool), and the Grafana dashboard (valid JSON, valid PromQL, and only
metrics that the node and coordinator really export)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.metrics import CoordinatorMetrics
from domicile.cli.up import plan_children
from domicile.cluster import load_cluster
from node.metrics import NodeMetrics

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "domicile.json"
CLUSTER = REPO / "deploy" / "cluster.yaml"
PROMTOOL_TIMEOUT_S = 60.0

METRIC_RE = re.compile(r"\bdomicile_[a-z0-9_]+\b")
RECORDED_RE = re.compile(r"\bdomicile:[a-z0-9_:]+\b")
# Grafana's interval variables are not PromQL; give them a value so promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "`promtool` is not on PATH: these tests need it to check the Prometheus rules. "
            "Install it with `apt-get install -y prometheus` (Debian/Ubuntu; `make test` does this "
            "when it is missing) or put the promtool binary of a Prometheus release on PATH.",
            pytrace=False,
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed (exit code {done.returncode}):\n{output}"
    return output


def exported_series() -> set[str]:
    """Every series name the node and the coordinator can export."""
    names: set[str] = set()
    for registry in (NodeMetrics("n", "r").registry, CoordinatorMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SERIES_SUFFIXES[family.type])
    return names


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows included."""
    queries: list[tuple[str, str]] = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        queries.extend((panel["title"], target["expr"]) for target in panel.get("targets", []))
    return queries


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- Prometheus ---------------------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_rules_unit_tests_pass(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in output


def test_scrape_config_passes_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert "SUCCESS" in output


def test_every_alert_has_a_firing_test_case() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), f"alerts without a test case where they fire: {sorted(alerts - tested)}"
    assert tested - alerts == set(), f"test cases for alerts that do not exist: {sorted(tested - alerts)}"


def test_every_alert_has_severity_and_texts() -> None:
    for rule in load_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "warning", "ticket"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_scrape_targets_follow_the_ports_of_domicile_up() -> None:
    """`domicile up` gives region i of deploy/cluster.yaml metrics port base + i; the scrape config
    must name the same ports and regions, or alerts would name the wrong region."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert (PROMETHEUS_DIR / config["rule_files"][0]).resolve() == RULES.resolve()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"domicile-coordinator", "domicile-node"}

    cluster = load_cluster(CLUSTER)
    children = plan_children(
        cluster,
        config_path=CLUSTER,
        data_dir=REPO / ".domicile",
        host="127.0.0.1",
        base_port=7400,
        metrics_base_port=9400,
        log_level="info",
        tls_dir=REPO / ".domicile" / "tls",
    )
    expected = {
        child.metrics_url.removeprefix("http://").removesuffix("/metrics"): child.name for child in children
    }
    coordinator_targets = [t for c in jobs["domicile-coordinator"]["static_configs"] for t in c["targets"]]
    assert coordinator_targets == [next(t for t, name in expected.items() if name == "coordinator")]
    node_targets = {
        target: static["labels"]["region"]
        for static in jobs["domicile-node"]["static_configs"]
        for target in static["targets"]
    }
    assert node_targets == {t: name for t, name in expected.items() if name != "coordinator"}


def test_rules_query_only_exported_metrics() -> None:
    exported = exported_series() | {"up"}
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    for rule in load_rules():
        expr = rule["expr"]
        name = rule.get("alert") or rule.get("record")
        unknown = set(METRIC_RE.findall(expr)) - exported
        assert not unknown, f"{name} queries metrics no daemon exports: {sorted(unknown)}"
        undefined = set(RECORDED_RE.findall(expr)) - recorded
        assert not undefined, (
            f"{name} uses recording rules that rules.yml does not define: {sorted(undefined)}"
        )


# --- Grafana ------------------------------------------------------------------------------------


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "domicile-overview"
    assert dashboard["title"]
    ids = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        ids.append(panel["id"])
        assert panel["type"] in {"row", "timeseries", "stat"}, panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_series()
    queries = dashboard_queries(load_dashboard())
    assert queries
    used: set[str] = set()
    for title, expr in queries:
        names = set(METRIC_RE.findall(expr))
        unknown = names - exported
        assert not unknown, f"panel {title!r} queries metrics no daemon exports: {sorted(unknown)}"
        assert not RECORDED_RE.findall(expr), f"panel {title!r} must work without the recording rules"
        used |= names
    required = {
        "domicile_replication_lag_seconds_bucket",
        "domicile_replication_backlog",
        "domicile_rpc_latency_seconds_bucket",
        "domicile_rpc_errors_total",
        "domicile_records_stored",
        "domicile_conflicts_total",
        "domicile_placement_refused_total",
        "domicile_topology_revision",
        "domicile_coordinator_topology_revision",
        "domicile_policy_decisions_total",
        "domicile_compliance_violations",
        "domicile_audit_entries",
        "domicile_audit_exported_size",
        "domicile_coordinator_audit_head_size",
        "domicile_coordinator_subject_requests_open",
        "domicile_coordinator_subject_requests_overdue",
        "domicile_coordinator_legal_holds",
        "domicile_erasures_completed_total",
        "domicile_erased_records_total",
        "domicile_retention_expired_total",
        "domicile_retention_last_sweep_timestamp_seconds",
    }
    assert required - used == set(), f"the dashboard shows nothing of {sorted(required - used)}"


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no query checker, so each query becomes a recording rule it must parse."""
    queries = dashboard_queries(load_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    output = run_promtool(promtool, "check", "rules", str(path))
    assert f"{len(queries)} rules found" in output


def test_lag_panel_shows_the_one_second_promise() -> None:
    dashboard = load_dashboard()
    panel = next(p for p in dashboard["panels"] if "domicile_replication_lag_seconds_bucket" in json.dumps(p))
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 1]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    quantiles = {m.group(1) for m in re.finditer(r"histogram_quantile\((0\.\d+)", json.dumps(panel))}
    assert quantiles == {"0.50", "0.99"}
