"""`domicile compliance remediate --plan` against the stand-in servers of test_client_wire: the
copies a remediation would remove per region, the regions each record stays in, a copy no
region may hold flagged, nothing applied, and the exit codes (0 nothing, 1 removals, 2 a region
not scanned)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from domicile.cli.main import main
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
    code = main(
        ["compliance", "remediate", *argv, "--coordinator", fake.coordinator_address, "--deadline", "5"]
    )
    out, err = capsys.readouterr()
    return code, out, err


def report(
    region: str, *copies: tuple[str, str, tuple[str, ...]], total: int | None = None
) -> spb.ScanComplianceResponse:
    resp = spb.ScanComplianceResponse(
        region=region,
        policy_version="p3",
        versions_checked=20,
        violations_total=len(copies) if total is None else total,
    )
    for key, jurisdiction, allowed in copies:
        resp.violations.add(
            namespace="customers",
            key=key,
            region=region,
            origin_region="eu-west-1",
            classification=Classification.PERSONAL,
            subject_jurisdiction=jurisdiction,
            rule=f"{'gdpr' if jurisdiction == 'DE' else 'pipl'}.no-transfer-basis",
            reason="tightened",
            allowed_regions=list(allowed),
        )
    return resp


def test_nothing_to_remove_is_exit_0(capsys, cluster):
    for region in cluster.nodes:
        cluster.nodes[region].compliance = report(region)
    code, out, _ = run(capsys, cluster, "--plan")
    assert code == 0
    assert out.splitlines()[-1].startswith("plan: 0 copies to remove; nothing was changed")


def test_the_plan_lists_forbidden_copies_and_where_each_record_stays(capsys, cluster):
    for region in cluster.nodes:
        cluster.nodes[region].compliance = report(region)
    cluster.nodes["us-east-1"].compliance = report(
        "us-east-1", ("c-1", "DE", ("eu-west-1", "eu-central-1")), ("c-2", "CN", ()), total=3
    )
    code, out, _ = run(capsys, cluster, "--plan", "--json")
    plan = json.loads(out)
    assert code == 1 and plan["applied"] is False
    assert plan["removals_total"] == 3 and plan["not_listed"] == 1
    assert plan["removals"] == [
        {
            "region": "us-east-1",
            "namespace": "customers",
            "key": "c-1",
            "rule": "gdpr.no-transfer-basis",
            "stays_in": ["eu-west-1", "eu-central-1"],
            "removes_the_record": False,
        },
        {
            "region": "us-east-1",
            "namespace": "customers",
            "key": "c-2",
            "rule": "pipl.no-transfer-basis",
            "stays_in": [],
            "removes_the_record": True,
        },
    ]
    # no removal is planned in a region the record may stay in
    assert all(r["region"] not in r["stays_in"] for r in plan["removals"])
    code, out, _ = run(capsys, cluster, "--plan")
    assert "us-east-1: would remove 3 copies" in out
    assert "customers/c-1  rule=gdpr.no-transfer-basis  stays in: eu-west-1, eu-central-1" in out
    assert "stays in: no region: this removes the record from the cluster" in out
    assert "... and 1 more not listed" in out


def test_a_region_that_cannot_be_scanned_is_exit_2(capsys, cluster):
    for region in cluster.nodes:
        cluster.nodes[region].compliance = report(region, ("c-1", "DE", ("eu-west-1",)))
    cluster.coordinator.topology.regions.add(name="sa-east-1")  # a region without a node
    code, out, _ = run(capsys, cluster, "--plan", "--json")
    assert code == 2 and json.loads(out)["regions_failed"] == ["sa-east-1"]


def test_plan_or_apply_is_required(capsys, cluster):
    with pytest.raises(SystemExit) as info:
        main(["compliance", "remediate", "--coordinator", cluster.coordinator_address])
    assert info.value.code == 2
    assert "one of the arguments --plan --apply is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["compliance", "remediate", "--plan", "--apply", "--coordinator", cluster.coordinator_address])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_apply_options_with_plan_are_refused_and_nothing_is_asked(capsys, cluster):
    code, _, err = run(capsys, cluster, "--plan", "--remove-last-copies")
    assert code == 2 and "go with --apply" in err
    assert all(not n.remediate_requests and not n.compliance_requests for n in cluster.nodes.values())


def receipt(region: str, removed: int, left: int = 0, kept: int = 0) -> spb.RemediateComplianceResponse:
    resp = spb.RemediateComplianceResponse(
        request_id="r-1",
        region=region,
        node_id=region,
        policy_version="p3",
        copies_removed=removed,
        versions_removed=removed,
        kept_last_copies=kept,
        receipt_audit_seq=41,
        violations_after=left,
    )
    for i in range(removed):
        resp.removed.add(
            namespace="customers", key=f"c-{i}", region=region, rule="gdpr.no-transfer-basis",
            allowed_regions=["eu-west-1"],
        )  # fmt: skip
    return resp


def test_apply_asks_every_region_and_prints_each_receipt(capsys, cluster):
    cluster.nodes["us-east-1"].receipt = receipt("us-east-1", 2)
    code, out, _ = run(capsys, cluster, "--apply", "--request-id", "r-1")
    assert code == 0
    assert all(n.remediate_requests[0].request_id == "r-1" for n in cluster.nodes.values())
    assert not any(n.remediate_requests[0].remove_last_copies for n in cluster.nodes.values())
    assert "us-east-1: removed 2 copies (2 versions) under policy p3; receipt r-1 at audit entry 41" in out
    assert "customers/c-0  rule=gdpr.no-transfer-basis  stays in: eu-west-1" in out
    assert out.splitlines()[-1] == "applied: 2 copies removed; 0 violations left"


def test_apply_with_violations_left_is_exit_1_and_a_failed_region_exit_2(capsys, cluster):
    cluster.nodes["us-east-1"].receipt = receipt("us-east-1", 1, left=1, kept=1)
    code, out, _ = run(capsys, cluster, "--apply", "--remove-last-copies", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["violations_after"] == 1 and doc["copies_removed"] == 1
    assert all(n.remediate_requests[0].remove_last_copies for n in cluster.nodes.values())
    cluster.nodes["us-east-1"].failures.append(grpc.StatusCode.PERMISSION_DENIED)
    code, out, _ = run(capsys, cluster, "--apply", "--json")
    assert code == 2 and json.loads(out)["regions_failed"] == ["us-east-1"]


HOLD = "legal hold hold-1 on the subject: litigation 7"


def test_the_plan_lists_held_copies_apart_and_does_not_count_them_as_removals(capsys, cluster):
    for region in cluster.nodes:
        cluster.nodes[region].compliance = report(region)
    held = report("us-east-1", ("c-1", "DE", ("eu-west-1",)), ("c-2", "CN", ()))
    held.violations[1].hold_reason = HOLD
    held.violations_held = 1
    cluster.nodes["us-east-1"].compliance = held
    code, out, _ = run(capsys, cluster, "--plan", "--json")
    plan = json.loads(out)
    assert code == 1 and plan["removals_total"] == 1 and plan["kept_held_total"] == 1
    assert [r["key"] for r in plan["removals"]] == ["c-1"]
    assert plan["kept_held"] == [
        {
            "region": "us-east-1",
            "namespace": "customers",
            "key": "c-2",
            "rule": "pipl.no-transfer-basis",
            "hold_reason": HOLD,
        }
    ]
    code, out, _ = run(capsys, cluster, "--plan")
    assert "us-east-1: would remove 1 copy" in out
    assert "  would keep 1 copy under a legal hold (never removed while the hold stands):" in out
    assert f"    customers/c-2  rule=pipl.no-transfer-basis  {HOLD}" in out
    assert out.splitlines()[-1].startswith("plan: 1 copy to remove, 1 copy kept under a legal hold;")


def test_apply_prints_the_copies_a_hold_kept(capsys, cluster):
    kept = receipt("us-east-1", 1, left=1)
    kept.kept_held = 1
    kept.held.add(
        namespace="customers", key="c-9", region="us-east-1", rule="pipl.no-transfer-basis", hold_reason=HOLD
    )
    cluster.nodes["us-east-1"].receipt = kept
    code, out, _ = run(capsys, cluster, "--apply", "--remove-last-copies")
    assert code == 1
    assert "  kept 1 copy under a legal hold (never removed while the hold stands):" in out
    assert f"    customers/c-9  rule=pipl.no-transfer-basis  {HOLD}" in out
    code, out, _ = run(capsys, cluster, "--apply", "--remove-last-copies", "--json")
    doc = json.loads(out)
    (region,) = [r for r in doc["regions"] if r["region"] == "us-east-1"]
    assert doc["kept_held"] == 1 and region["kept_held"] == 1
    assert [(v["key"], v["hold_reason"]) for v in region["held"]] == [("c-9", HOLD)]
