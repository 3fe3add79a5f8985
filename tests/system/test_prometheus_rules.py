"""The monitoring assets in deploy/: Prometheus scrape config, recording and alerting rules (checked
and unit-tested with promtool), and the Grafana dashboard (valid JSON, valid PromQL, and only
metrics that the node and coordinator really export)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.metrics import CoordinatorMetrics
from domicile.cli.up import PROMETHEUS_IDENTITY, make_dev_pki, plan_children
from domicile.cluster import load_cluster
from domicile.ports import free_port
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


def test_scrape_config_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    """Checked where its relative paths lead to what `domicile up` writes: the rules beside it and
    the development CA and Prometheus' client certificate in .domicile/tls (promtool reads them)."""
    copy = tmp_path / "deploy" / "prometheus"
    copy.mkdir(parents=True)
    shutil.copy(SCRAPE_CONFIG, copy / SCRAPE_CONFIG.name)
    shutil.copy(RULES, copy / RULES.name)
    make_dev_pki(load_cluster(CLUSTER), tmp_path / ".domicile" / "tls", "127.0.0.1")
    output = run_promtool(promtool, "check", "config", str(copy / SCRAPE_CONFIG.name))
    assert "SUCCESS" in output
    # Negative control: without the certificates the same config fails the check.
    shutil.rmtree(tmp_path / ".domicile")
    missing = subprocess.run(
        [promtool, "check", "config", str(copy / SCRAPE_CONFIG.name)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    assert missing.returncode != 0 and "client-prometheus" in missing.stdout + missing.stderr


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
        child.metrics_url.removeprefix("https://").removesuffix("/metrics"): child.name for child in children
    }
    # Every port serves mutual TLS: Prometheus presents the certificate `domicile up` issues it.
    tls_dir = Path("../../.domicile/tls")
    for job in jobs.values():
        assert job["scheme"] == "https"
        assert job["tls_config"] == {
            "ca_file": str(tls_dir / "ca.crt"),
            "cert_file": str(tls_dir / f"client-{PROMETHEUS_IDENTITY}.crt"),
            "key_file": str(tls_dir / f"client-{PROMETHEUS_IDENTITY}.key"),
        }
    assert (PROMETHEUS_DIR / tls_dir).resolve() == (REPO / ".domicile" / "tls").resolve()
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


# --- a real Prometheus scraping over mutual TLS -------------------------------------------------

SCRAPE_WAIT_S = 60.0


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "`prometheus` is not on PATH: this test runs it against a daemon. Install it with "
            "`apt-get install -y prometheus` (`make test` does this when it is missing).",
            pytrace=False,
        )
    return path


@pytest.fixture
def tls_coordinator(tmp_path: Path) -> Iterator[str]:
    """A coordinator with the development PKI of `domicile up` in tmp/.domicile/tls; yields its
    metrics address."""
    tls = tmp_path / ".domicile" / "tls"
    make_dev_pki(load_cluster(CLUSTER), tls, "127.0.0.1")
    metrics_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--metrics-port",
            str(metrics_port),
            "--cluster-config",
            str(CLUSTER),
            "--data-dir",
            str(tmp_path / "coordinator"),
            "--tls-dir",
            str(tls),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.endswith(f" metrics https://127.0.0.1:{metrics_port}/metrics"), line
        yield f"127.0.0.1:{metrics_port}"
    finally:
        process.terminate()
        process.wait(30)


def test_prometheus_scrapes_a_daemon_over_mutual_tls_with_the_config_in_deploy(
    prometheus_binary: str, tls_coordinator: str, tmp_path: Path
) -> None:
    """deploy/prometheus/prometheus.yml's TLS settings, as they are, against a daemon of a cluster
    `domicile up` would run; and its negative control, the same scrape with an app's certificate,
    which the daemon refuses."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "domicile-coordinator")
    job["static_configs"] = [{"targets": [tls_coordinator]}]
    app = dict(job, job_name="as-an-app", tls_config=dict(job["tls_config"]))
    app["tls_config"]["cert_file"] = "../../.domicile/tls/client-trading.crt"
    app["tls_config"]["key_file"] = "../../.domicile/tls/client-trading.key"
    config["scrape_configs"] = [job, app]
    copy = tmp_path / "deploy" / "prometheus"
    copy.mkdir(parents=True)
    (copy / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, copy / RULES.name)
    web = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={copy / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        health = wait_for_targets(web, {"domicile-coordinator", "as-an-app"})
    finally:
        process.terminate()
        process.wait(30)
    assert health["domicile-coordinator"] == ("up", ""), health
    state, error = health["as-an-app"]
    assert state == "down" and "403" in error, health


def wait_for_targets(web: str, jobs: set[str]) -> dict[str, tuple[str, str]]:
    """(health, last error) of each job's target once every one has been scraped."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    seen: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{web}/api/v1/targets", timeout=5) as reply:
                targets = json.loads(reply.read())["data"]["activeTargets"]
        except OSError:
            time.sleep(0.2)  # not listening yet
            continue
        seen = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        if set(seen) == jobs and all(h != "unknown" for h, _ in seen.values()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape every target within {SCRAPE_WAIT_S} s: {seen}")
