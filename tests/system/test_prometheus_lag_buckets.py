"""Regression: DomicileReplicationLagOverPromise cannot fire for a batch or scheduled link whose allowance
is 29 s or more: domicile_replication_lag_seconds (node/metrics.py LAG_BUCKETS_S) has no finite
bucket above 30 s, so histogram_quantile() never returns more than 30 s, while the alert's
threshold is 1 + allowance (301 s for the README's `batch, interval_s: 300`). A batch link
whose every mutation lands 450 s late (150 s past its mode) never pages.

deploy/prometheus/rules_test.yml hides this: its batch-link case feeds buckets le="100",
"250", "400", "500", which no node exports. This test replays that same case (allowance 300 s,
lag between 400 and 500 s) with the buckets the node really exports, through promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from node.metrics import LAG_BUCKETS_S

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"
LAG_SERIES = "domicile_replication_lag_seconds_bucket"


def le_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


def test_batch_link_far_past_its_allowance_pages(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (make test-tools)"
    labels = (
        'job="domicile-node",instance="127.0.0.1:9406",region="sa-east-1",source="us-east-1",'
        'target="sa-east-1"'
    )
    series = [
        {
            "series": 'domicile_replication_sync_allowance_seconds{job="domicile-node",'
            'instance="127.0.0.1:9401",region="us-east-1",source="us-east-1",target="sa-east-1"}',
            "values": "300x40",
        }
    ]
    # Every apply 450 s after its commit (one a second): only +Inf counts them.
    for bound in (*LAG_BUCKETS_S, float("inf")):
        values = "0+60x40" if bound > 450 else "0x40"
        series.append({"series": f'{LAG_SERIES}{{{labels},le="{le_text(bound)}"}}', "values": values})
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    # The alert's own condition (its `for: 5m` is long past at 30m).
                    {
                        "expr": f"count({alert_expr('DomicileReplicationLagOverPromise')})",
                        "eval_time": "30m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                    # The p99 the rules compute cannot exceed the largest finite bucket (30 s).
                    {
                        "expr": 'count(domicile:replication_lag_seconds:p99_5m{target="sa-east-1"} > 301)',
                        "eval_time": "30m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "lag_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (
        "with the lag buckets node/metrics.py exports (largest finite "
        f"{max(LAG_BUCKETS_S)} s), a batch link 150 s past its 300 s allowance does not page:\n"
        + done.stdout
        + done.stderr
    )


def alert_expr(name: str) -> str:
    data = yaml.safe_load(RULES.read_text())
    (expr,) = [r["expr"] for g in data["groups"] for r in g["rules"] if r.get("alert") == name]
    return str(expr)


def test_rules_test_feeds_only_lag_buckets_the_node_exports() -> None:
    exported = {le_text(b) for b in (*LAG_BUCKETS_S, float("inf"))}
    data = yaml.safe_load(RULES_TEST.read_text())
    fed = {
        s["series"].split('le="')[1].split('"')[0]
        for t in data["tests"]
        for s in t.get("input_series", [])
        if s["series"].startswith(LAG_SERIES)
    }
    assert fed <= exported, f"rules_test.yml feeds lag buckets no node exports: {sorted(fed - exported)}"
