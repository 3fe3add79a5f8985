"""bench/run.py still runs end to end and reports every figure (the values are not checked:
speed is measured by the benchmark, never asserted by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Like every system test: a run starts about ten daemons, and on a busy 2-core machine each
# start alone takes seconds. The run's own timeout fires first, with the bench's output.
pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "echo_p50_ms",
    "echo_p99_ms",
    "plain_echo_p50_ms",
    "plain_echo_p99_ms",
    "fdatasync_p50_ms",
    "fdatasync_p99_ms",
    "echo_rate_per_s",
    "get_p50_ms",
    "get_p99_ms",
    "put_p50_ms",
    "put_p99_ms",
    "echo_cpu_us_per_call",
    "put_cpu_us_per_write",
    "put_loop_lag_max_ms",
    "plain_get_p99_ms",
    "mtls_get_p99_ms",
    "plain_put_p99_ms",
    "mtls_put_p99_ms",
    "sealed_put_p50_ms",
    "sealed_put_p99_ms",
    "unchecked_put_p99_ms",
    "schema_put_p99_ms",
    "sealed_get_p50_ms",
    "sealed_get_p99_ms",
    "mongodb_get_p99_ms",
    "mongodb_get_p99_vs_echo_ms",
    "mongodb_put_p99_ms",
    "mongodb_one_daemon_rate_per_s",
    "mongodb_two_daemons_rate_per_s",
    "batched_put_rate_per_s",
    "put_batch_rate_per_s",
    "put_batch_cpu_us_per_record",
    "batched_put_lsn_rate_per_s",
    "commit_batch_records_mean",
    "engine_commit_rate_per_s",
    "engine_cpu_us_per_record",
    "engine_audit_commit_rate_per_s",
    "engine_audit_cpu_us_per_record",
    "lag_p50_ms",
    "lag_p99_ms",
    "lag_within_pct",
    "lag_status_p99_ms",
    "lag_write_rate_per_s",
    "delayed_lag_p50_ms",
    "delayed_lag_p99_ms",
    "delayed_lag_within_pct",
    "delayed_lag_status_p99_ms",
    "sync_put_p50_ms",
    "sync_put_p99_ms",
    "delayed_write_rate_per_s",
    "cache_echo_p99_ms",
    "cache_hit_get_p50_ms",
    "cache_hit_get_p99_ms",
    "cache_miss_get_p99_ms",
    "cache_zipf_hit_ratio",
    "cache_hit_mongo_get_p99_ms",
    "cache_hit_mongo_hit_share",
}
FIELDS = {"key", "label", "value", "unit", "baseline", "baseline_label", "ratio", "target", "met"}


def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "bench/run.py",
        "--quick",
        "--samples",
        "50",
        "--load-seconds",
        "1",
        "--load-procs",
        "1",
        "--inflight",
        "16",
        "--lag-seconds",
        "1",
        "--lag-rate",
        "200",
        "--engine-batches",
        "1",
        # The synchronous Puts and their echo baseline take two delays a call each: 25 ms keeps
        # that phase at about 5 s (the bench's own 50 ms, 11 s). d + 50 ms, the delayed lag's
        # target, is then still on a bucket edge of the lag histogram (its "within" figure).
        "--delay-ms",
        "25",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=270, check=False)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stderr[-4000:]}"
    results = json.loads(out.read_text())
    figures = results["figures"]
    assert set(figures) == FIGURES, f"missing {FIGURES - set(figures)}, unexpected {set(figures) - FIGURES}"
    for key, figure in figures.items():
        assert set(figure) == FIELDS, f"{key} has fields {sorted(figure)}"
        assert figure["key"] == key
    for key in ("echo_p99_ms", "fdatasync_p99_ms", "get_p99_ms", "put_p99_ms", "lag_p99_ms"):
        assert isinstance(figures[key]["value"], float), f"{key} was not measured"
    verdicts = ("get_p99_ms", "put_p99_ms", "batched_put_rate_per_s", "lag_p99_ms", "delayed_lag_p99_ms")
    for key in (*verdicts, "lag_within_pct", "delayed_lag_within_pct"):
        assert isinstance(figures[key]["met"], bool), f"{key} has no verdict against its target"
    assert results["parameters"]["samples"] == 50
    # A node whose cache never answers (every lookup failing over to the store) still reports
    # figures: the share says it.
    assert (figures["cache_hit_mongo_hit_share"]["value"] or 0) > 0, "the cache answered no Get"
    for figure in FIGURES:
        assert figure in done.stdout or figures[figure]["label"] in done.stdout
