"""`domicile compliance scan` against the stand-in servers of test_client_wire: per-region
results, violations, the total line, exit codes (0 none, 1 violations, 2 a region not scanned),
and the audit and compliance columns of `domicile status`, the subject flags of `delete` and the
redaction note of `get`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from domicile.cli.main import build_parser, main
from domicile.model import Classification
from domicile.v1 import storage_node_pb2 as spb
from tests.unit.test_client_wire import FakeCluster


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


def run(capsys, fake: FakeCluster, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--coordinator", fake.coordinator_address, "--deadline", "5"])
    out, err = capsys.readouterr()
    return code, out, err


def violations(region: str, count: int, checked: int = 50) -> spb.ScanComplianceResponse:
    resp = spb.ScanComplianceResponse(
        region=region, policy_version="p2", versions_checked=checked, violations_total=count
    )
    for i in range(count):
        resp.violations.add(
            namespace="customers",
            key=f"c-{i}",
            region=region,
            origin_region="eu-west-1",
            classification=Classification.PERSONAL,
            subject_jurisdiction="DE",
            rule="gdpr.no-transfer-basis",
            reason=f"personal data of a subject in DE (GDPR) may not be stored in {region}",
            allowed_regions=["eu-west-1", "eu-central-1"],
        )
    return resp


def test_a_clean_cluster_is_exit_0(capsys, cluster):
    for region in ("us-east-1", "eu-west-1", "eu-central-1"):
        cluster.nodes[region].compliance = violations(region, 0, checked=10)
    code, out, err = run(capsys, cluster, "compliance", "scan")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "us-east-1: 10 versions checked, 0 violations (policy p2, node us-east-1)",
        "eu-west-1: 10 versions checked, 0 violations (policy p2, node eu-west-1)",
        "eu-central-1: 10 versions checked, 0 violations (policy p2, node eu-central-1)",
        "total: 3 regions scanned, 30 versions checked, 0 violations",
    ]


def test_violations_are_listed_per_region_and_exit_1(capsys, cluster):
    cluster.nodes["us-east-1"].compliance = violations("us-east-1", 2)
    code, out, _ = run(capsys, cluster, "compliance", "scan")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "us-east-1: 50 versions checked, 2 violations (policy p2, node us-east-1)"
    assert lines[1] == (
        "  customers/c-0  region=us-east-1 origin=eu-west-1 classification=personal jurisdiction=DE "
        "rule=gdpr.no-transfer-basis"
    )
    assert lines[2] == "    reason: personal data of a subject in DE (GDPR) may not be stored in us-east-1"
    assert lines[3] == "    allowed regions: eu-west-1, eu-central-1"
    assert lines[-1] == "total: 3 regions scanned, 50 versions checked, 2 violations"


def test_only_the_listed_regions_are_scanned(capsys, cluster):
    cluster.nodes["us-east-1"].compliance = violations("us-east-1", 2)
    code, out, _ = run(capsys, cluster, "compliance", "scan", "--region", "eu-west-1", "-r", "eu-central-1")
    assert code == 0
    assert cluster.regions_called("ScanCompliance") == ["eu-west-1", "eu-central-1"]
    assert out.splitlines()[-1] == "total: 2 regions scanned, 0 versions checked, 0 violations"


def test_violations_beyond_the_maximum_are_counted(capsys, cluster):
    cluster.nodes["eu-west-1"].compliance = violations("eu-west-1", 5)
    code, out, _ = run(capsys, cluster, "compliance", "scan", "-r", "eu-west-1", "--violations-max", "2")
    assert code == 1
    assert cluster.nodes["eu-west-1"].compliance_requests[0].violations_max == 2
    assert "  ... and 3 more not listed (raise --violations-max)" in out.splitlines()


def test_json_shape(capsys, cluster):
    cluster.nodes["eu-central-1"].compliance = violations("eu-central-1", 1, checked=7)
    code, out, _ = run(capsys, cluster, "compliance", "scan", "--json")
    doc = json.loads(out)
    assert code == 1
    assert [r["region"] for r in doc["regions"]] == ["us-east-1", "eu-west-1", "eu-central-1"]
    central = doc["regions"][2]
    assert central["scanned"] and central["error"] == "" and central["node_id"] == "eu-central-1"
    assert (central["versions_checked"], central["violations_total"], central["policy_version"]) == (
        7,
        1,
        "p2",
    )
    assert central["violations"] == [
        {
            "namespace": "customers",
            "key": "c-0",
            "region": "eu-central-1",
            "origin_region": "eu-west-1",
            "classification": "personal",
            "subject_jurisdiction": "DE",
            "rule": "gdpr.no-transfer-basis",
            "reason": "personal data of a subject in DE (GDPR) may not be stored in eu-central-1",
            "allowed_regions": ["eu-west-1", "eu-central-1"],
            "hold_reason": "",
        }
    ]
    assert central["violations_held"] == 0
    assert (doc["versions_checked"], doc["violations_total"], doc["regions_failed"]) == (7, 1, [])
    assert doc["compliant"] is False and doc["violations_held"] == 0


def test_a_held_violation_says_which_hold_keeps_it(capsys, cluster):
    """Still a violation (the copy is where the policy forbids it), and still exit 1."""
    report = violations("us-east-1", 2)
    report.violations[1].hold_reason = "legal hold hold-1 on the subject: litigation 7"
    report.violations_held = 1
    cluster.nodes["us-east-1"].compliance = report
    code, out, _ = run(capsys, cluster, "compliance", "scan")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (
        "us-east-1: 50 versions checked, 2 violations (1 under a legal hold) (policy p2, node us-east-1)"
    )
    held = "legal hold hold-1 on the subject: litigation 7"
    assert f"    held: {held} (no remediation removes it while the hold stands)" in lines
    assert sum(line.startswith("    held: ") for line in lines) == 1
    assert lines[-1] == "total: 3 regions scanned, 50 versions checked, 2 violations (1 under a legal hold)"
    code, out, _ = run(capsys, cluster, "compliance", "scan", "--json")
    doc = json.loads(out)
    assert doc["violations_held"] == 1 and doc["regions"][0]["violations_held"] == 1
    assert [v["hold_reason"] for v in doc["regions"][0]["violations"]] == [
        "",
        "legal hold hold-1 on the subject: litigation 7",
    ]


def test_a_region_that_cannot_be_scanned_is_exit_2_and_the_rest_is_printed(capsys, cluster):
    cluster.nodes["us-east-1"].compliance = violations("us-east-1", 1)
    cluster.coordinator.topology.nodes[1].address = "127.0.0.1:1"  # eu-west-1 unreachable
    cluster.coordinator.topology.regions.add(name="sa-east-1")  # a region without a node
    code, out, _ = run(capsys, cluster, "compliance", "scan")
    assert code == 2
    lines = out.splitlines()
    assert lines[0].startswith("us-east-1: 50 versions checked, 1 violation ")
    assert any(
        line.startswith("eu-west-1: not scanned: node eu-west-1 (eu-west-1) at 127.0.0.1:1") for line in lines
    )
    assert "sa-east-1: not scanned: no node is registered in region sa-east-1" in lines
    assert lines[-1] == (
        "total: 2 regions scanned, 50 versions checked, 1 violation; 2 regions could not be scanned"
    )
    _, out, _ = run(capsys, cluster, "compliance", "scan", "--json")
    doc = json.loads(out)
    assert doc["regions_failed"] == ["eu-west-1", "sa-east-1"] and doc["compliant"] is False


def test_compliance_usage_and_input_errors(capsys, cluster):
    code, out, err = run(capsys, cluster, "compliance", "scan", "-r", "mars-1")
    assert (code, out) == (2, "")
    assert err.startswith("error: unknown region 'mars-1'; regions: us-east-1, eu-west-1, eu-central-1")
    with pytest.raises(SystemExit) as raised:
        main(["compliance", "scan", "--violations-max", "10001"])
    assert raised.value.code == 2
    capsys.readouterr()


def test_the_scan_has_a_long_default_deadline():
    args = build_parser().parse_args(["compliance", "scan"])
    assert args.deadline == 300.0 and args.region is None and args.violations_max == 1000
    assert build_parser().parse_args(["status"]).deadline == 5.0


# -- status, delete, get


def test_status_shows_audit_and_compliance_counters(capsys, cluster):
    cluster.give_audit_log("eu-west-1", 12, exported=10)
    cluster.nodes["eu-west-1"].compliance = violations("eu-west-1", 3)
    code, out, _ = run(capsys, cluster, "status")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("REGION"))
    assert "AUDIT ENTRIES  AUDIT EXPORTED  VIOLATIONS" in header
    row = next(line.split() for line in lines if line.startswith("eu-west-1 "))
    assert row[6:9] == ["12", "10", "3"]
    code, out, _ = run(capsys, cluster, "status", "--json")
    node = next(n for n in json.loads(out)["nodes"] if n["node_id"] == "eu-west-1")
    assert (node["audit_entries"], node["audit_exported_size"], node["compliance_violations"]) == (12, 10, 3)


def test_status_shows_a_backfill_in_progress_and_none_where_none_ran(capsys, cluster):
    cluster.nodes["us-east-1"].backfill = spb.BackfillStatus(
        state="running", topology_revision=7, policy_version="p2", pairs_total=6, pairs_done=2,
        keys_pulled=1500, rate_keys_per_second=500,
    )  # fmt: skip
    code, out, _ = run(capsys, cluster, "status")
    assert code == 0
    rows = [
        line.split() for line in out.splitlines() if line.startswith(("BACKFILL", "us-east-1 ", "eu-west-1 "))
    ]
    assert ["us-east-1", "running", "p2", "(rev", "7)", "2/6", "1500", "500"] in rows
    assert not any(r[0] == "eu-west-1" and "running" in r for r in rows)
    code, out, _ = run(capsys, cluster, "status", "--json")
    nodes = {n["node_id"]: n for n in json.loads(out)["nodes"]}
    assert nodes["us-east-1"]["backfill"]["keys_pulled"] == 1500 and nodes["eu-west-1"]["backfill"] is None


def test_delete_passes_the_subject(capsys, cluster):
    code, _, _ = run(
        capsys,
        cluster,
        "delete", "-n", "customers_eu", "-k", "c-1", "--subject-id", "c-1", "--subject-jurisdiction", "DE",
    )  # fmt: skip
    assert code == 0
    code, _, _ = run(capsys, cluster, "delete", "-n", "customers_eu", "-k", "c-2")
    sent = cluster.nodes["eu-west-1"].deletes
    assert [(d.subject_id, d.subject_jurisdiction) for d in sent] == [("c-1", "DE"), ("", "")]


def test_get_notes_redacted_fields_on_stderr(capsys, cluster):
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "secret")
    cluster.nodes["us-east-1"].redact = ("value",)
    code, out, err = run(capsys, cluster, "get", "-n", "instruments", "-k", "k")
    assert (code, out) == (0, "\n")
    assert err == "note: version us-east-1:1: the residency policy redacted value from this read\n"
    code, out, err = run(capsys, cluster, "get", "-n", "instruments", "-k", "k", "--json")
    assert err == "" and json.loads(out)["versions"][0]["redacted_fields"] == ["value"]
