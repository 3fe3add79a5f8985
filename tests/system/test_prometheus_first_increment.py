"""Alerts on counters whose labelled child a daemon creates at its first increment: the series is
born at 1, and increase() of a series that appears at 1 and stays there is 0. Each such alert
also fires for a series new within its window (regression: a node's first DATA_LOSS, first
unacknowledged synchronous write or first refused replication paged nobody)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from domicile import errors
from node.api.storage import guarded
from node.metrics import NodeMetrics

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
NODE = 'job="domicile-node",instance="127.0.0.1:9405",region="ap-northeast-1"'
LINK = 'source="eu-west-1",target="ap-northeast-1"'
# Each alert, and a series of its counter as a node exports it.
LAZY_COUNTERS = {
    "DomicileSyncWritesUnacknowledged": f'domicile_sync_ack_timeouts_total{{{NODE},namespace="orders"}}',
    "DomicileReplicationRefused": f"domicile_replication_refused_total{{{NODE},{LINK}}}",
    "DomicileReplicationRejected": f'domicile_replication_rejected_total{{{NODE},{LINK},reason="context"}}',
    "DomicileClockDrift": f'domicile_replication_rejected_total{{{NODE},{LINK},reason="clock_drift"}}',
    "DomicileDataCorruption": f'domicile_rpc_errors_total{{{NODE},method="Get",code="DATA_LOSS"}}',
    "DomicileRetentionCapped": f"domicile_retention_capped_total{{{NODE}}}",
    "DomicileSqliteCheckpointsFailing": (
        f'domicile_sqlite_checkpoints_total{{{NODE},file="store",outcome="failed"}}'
    ),
}


class _Aborted(Exception):
    pass


class _Context:
    """The little of grpc.aio.ServicerContext that `guarded` uses."""

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, _: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code)


def _data_loss(metrics: NodeMetrics) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name == "domicile_rpc_errors_total" and s.labels.get("code") == "DATA_LOSS":
                out[s.labels["method"]] = s.value
    return out


async def test_a_data_loss_counter_is_born_at_one() -> None:
    """What the rules must expect: the node exports no DATA_LOSS series until the first one."""
    metrics = NodeMetrics("ap-northeast-1", "ap-northeast-1")
    assert _data_loss(metrics) == {}

    async def corrupted() -> None:
        raise errors.DataCorruption("stored value of instruments/XS1 does not match its sha256")

    with pytest.raises(_Aborted):
        await guarded(metrics, "Get", _Context(), 5.0, corrupted)  # type: ignore[arg-type]
    assert _data_loss(metrics) == {"Get": 1.0}


def _expr(data: dict[str, Any], name: str) -> str:
    (expr,) = [r["expr"] for g in data["groups"] for r in g["rules"] if r.get("alert") == name]
    return str(expr)


def test_each_alert_fires_for_a_counter_born_at_one_and_for_one_counted_from_zero(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (make test-tools installs it)"
    data = yaml.safe_load(RULES.read_text())
    tests = []
    for name, series in LAZY_COUNTERS.items():
        expr = _expr(data, name)
        # Scraped every minute: absent for 5 minutes then 1 (as exported), and, as a control,
        # 0 then 1 (a counter created at start).
        for values in ("_x5 1x15", "0x5 1x15"):
            tests.append(
                {
                    "interval": "1m",
                    "input_series": [{"series": series, "values": values}],
                    "promql_expr_test": [
                        {
                            "expr": f"count({expr})",
                            "eval_time": "8m",
                            "exp_samples": [{"labels": "{}", "value": 1}],
                        }
                    ],
                }
            )
    path = tmp_path / "first_increment_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
