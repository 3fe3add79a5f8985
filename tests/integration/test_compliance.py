"""The compliance core end to end: one decision function on write, replication (both ends) and
read, tombstones that follow their record, policy changes reported by the scanner, and every
refusal in the region's audit trail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile.audit import AuditEntry, subject_hash
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.errors import ALLOWED_REGIONS_KEYS
from node.compliance.audit_log import load_or_create_keys
from node.daemon import Node
from tests.support.cluster import NAMESPACES, LocalCluster, eventually
from tests.support.packs import sample_pack, set_read_refused, with_fact

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1"]
CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}
NAMESPACES_WITH_CUSTOMERS = [*NAMESPACES, CUSTOMERS]
DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]
# How long four nodes may take to link, a replicated record to reach a region, or a link to
# move past it.
REPLICATED_S = 30.0


def audit_entries(node: Node) -> list[AuditEntry]:
    return [AuditEntry.decode(e.body) for e in node.audit.iter_all()]


async def audited(node: Node, **match: str) -> list[AuditEntry]:
    """Entries of the node's trail whose fields equal `match`, once durable."""
    await node.audit.flush()
    return [e for e in audit_entries(node) if all(getattr(e, k) == v for k, v in match.items())]


def metric(node: Node, name: str, labels: dict[str, str] | None = None) -> float:
    value = node.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
async def lawful(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Four regions enforcing the sample policy pack."""
    cluster = LocalCluster(tmp_path, REGIONS, pack=sample_pack(), namespaces=NAMESPACES_WITH_CUSTOMERS)
    await cluster.start_linked(REPLICATED_S)
    try:
        yield cluster
    finally:
        await cluster.stop()


async def put(
    cluster: LocalCluster, region: str, key: str, jurisdiction: str, **fields: Any
) -> spb.PutResponse:
    return await cluster.put(
        region, "customers", key, b"profile of " + key.encode(), subject_id=f"subject-{key}",
        subject_jurisdiction=jurisdiction, **fields,
    )  # fmt: skip


async def test_status_reports_the_pack_version_every_node_enforces(lawful: LocalCluster) -> None:
    version = sample_pack()["version"]
    for region in REGIONS:
        status = await lawful.stub(region).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
        assert status.policy_version == version


async def test_a_put_the_law_refuses_names_the_regions_that_may_and_writes_nothing(
    lawful: LocalCluster,
) -> None:
    # APPI: a Japanese customer's data may be in Japan and in the designated EU, not in the US.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(lawful, "us-east-1", "jp-1", "JP")
    error = info.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "region us-east-1 may not hold this record" in (error.details() or "")
    assert "APPI" in (error.details() or "")
    trailer = dict(error.trailing_metadata() or ())
    assert trailer[ALLOWED_REGIONS_KEYS[0]] == "eu-west-1,eu-central-1,ap-northeast-1"
    node = lawful.nodes["us-east-1"]
    assert node.engine.get("customers", "jp-1") is None
    (entry,) = await audited(node, action="put", key="jp-1")
    assert entry.decision == "refuse" and entry.rule.startswith("appi")
    # The trail holds a keyed hash of the subject, never the subject id itself.
    assert entry.subject and entry.subject != "subject-jp-1"
    assert "subject-jp-1" not in entry.encode().decode()
    refused = metric(
        node, "domicile_policy_decisions_total", {"action": "store", "result": "refuse", "rule": entry.rule}
    )
    assert refused == 1


async def test_personal_data_without_a_jurisdiction_is_refused_everywhere(lawful: LocalCluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await lawful.put("eu-west-1", "customers", "anon", b"x", subject_id="s")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "subject_jurisdiction" in (info.value.details() or "")
    assert lawful.nodes["eu-west-1"].engine.get("customers", "anon") is None


async def test_the_source_sends_a_record_only_where_the_law_allows(lawful: LocalCluster) -> None:
    # Each wait is on a condition and ends as soon as it holds; its bound is for a CI machine
    # running far past its cores, where four nodes with mutual TLS take seconds per hop.
    # A German customer: the EEA, Japan (adequacy) and us-east-1 (DPF-certified recipient).
    await put(lawful, "eu-west-1", "de-1", "DE")
    for region in ("eu-central-1", "ap-northeast-1", "us-east-1"):
        await eventually(
            lambda r=region: _holds(lawful, r, "de-1"), REPLICATED_S, f"de-1 replicated to {region}"
        )
    # A Japanese customer: Japan and the EU, never the US.
    written = await put(lawful, "ap-northeast-1", "jp-2", "JP")
    for region in ("eu-west-1", "eu-central-1"):
        await eventually(
            lambda r=region: _holds(lawful, r, "jp-2"), REPLICATED_S, f"jp-2 replicated to {region}"
        )
    source = lawful.nodes["ap-northeast-1"]

    async def passed_us() -> bool:
        sender = source.replication.senders.get("us-east-1")
        return sender is not None and sender.acked_lsn >= written.lsn

    await eventually(passed_us, REPLICATED_S, "the us-east-1 link past jp-2")
    assert lawful.nodes["us-east-1"].engine.get("customers", "jp-2") is None
    withheld = await audited(source, action="replicate_send", key="jp-2", decision="refuse")
    assert len(withheld) >= 1 and all("to=us-east-1" in e.detail for e in withheld)
    sent = await audited(source, action="replicate_send", key="jp-2", decision="allow")
    assert {e.detail.split()[0] for e in sent} >= {"to=eu-west-1", "to=eu-central-1"}
    received = await audited(lawful.nodes["eu-west-1"], action="replicate_receive", key="jp-2")
    assert received and received[0].decision == "allow" and received[0].principal == "node:ap-northeast-1"


async def _holds(cluster: LocalCluster, region: str, key: str) -> bool:
    return cluster.nodes[region].engine.get("customers", key) is not None


async def test_a_delete_tombstone_carries_the_subject_and_follows_the_record(lawful: LocalCluster) -> None:
    await put(lawful, "eu-west-1", "de-2", "DE")
    await eventually(lambda: _holds(lawful, "eu-central-1", "de-2"), what="de-2 at eu-central-1")
    deleted = await lawful.stub("eu-west-1").Delete(
        spb.DeleteRequest(namespace="customers", key="de-2"), timeout=5
    )
    assert deleted.existed and deleted.version.tombstone
    assert deleted.version.subject_jurisdiction == "DE" and deleted.version.subject_id == "subject-de-2"

    async def gone(region: str) -> bool:
        state = lawful.nodes[region].engine.get("customers", "de-2")
        return state is not None and not state.has_live()

    for region in ("eu-central-1", "ap-northeast-1", "us-east-1"):
        await eventually(lambda r=region: gone(r), what=f"the tombstone at {region}")


async def test_a_delete_of_an_unknown_personal_record_needs_its_jurisdiction(lawful: LocalCluster) -> None:
    stub = lawful.stub("us-east-1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Delete(spb.DeleteRequest(namespace="customers", key="never"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "subject_jurisdiction" in (info.value.details() or "")
    assert lawful.nodes["us-east-1"].engine.get("customers", "never") is None
    done = await stub.Delete(
        spb.DeleteRequest(namespace="customers", key="never", subject_jurisdiction="US-CA"), timeout=5
    )
    assert not done.existed and done.version.subject_jurisdiction == "US-CA"


async def test_a_delete_with_a_malformed_jurisdiction_is_invalid(lawful: LocalCluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await lawful.stub("us-east-1").Delete(
            spb.DeleteRequest(namespace="customers", key="k", subject_jurisdiction="Germany"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert lawful.nodes["us-east-1"].engine.get("customers", "k") is None


async def test_a_rogue_source_pushing_eu_personal_data_to_the_us_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    # Without the DPF certification of us-east-1, GDPR allows no EU personal data there.
    pack = with_fact(sample_pack(), "2026-11-27.no-dpf", DPF, False)
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=pack, namespaces=NAMESPACES_WITH_CUSTOMERS
    )
    await cluster.start()
    try:
        await cluster.wait_linked()
        target = cluster.nodes["us-east-1"]
        # eu-west-1's own certificate (a stolen key, or a node that ignores the scope): the
        # stream's source checks out, so the record itself must be judged and refused.
        channel = cluster.channel_as_node("eu-west-1", target.address)
        try:
            call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
            hello = rpb.ReplicationHello(
                source_node_id="eu-west-1", source_region="eu-west-1", target_node_id="us-east-1"
            )
            await call.write(rpb.ReplicateRequest(hello=hello))
            ready = await call.read()
            assert ready.ready.resume_after_lsn == 0
            mutation = pb.Mutation(namespace="customers", key="stolen", lsn=1, origin_node_id="eu-west-1")
            mutation.version.dot.node_id = "eu-west-1"
            mutation.version.dot.counter = 1
            mutation.version.value = b"an EU customer's profile"
            mutation.version.classification = pb.CLASSIFICATION_PERSONAL
            mutation.version.subject_id = "c-77"
            mutation.version.subject_jurisdiction = "FR"
            mutation.version.origin_region = "eu-west-1"
            await call.write(
                rpb.ReplicateRequest(batch=rpb.ReplicationBatch(mutations=[mutation], through_lsn=1))
            )
            ack = await call.read()
            assert ack.ack.refused_count == 1 and ack.ack.applied_through_lsn == 1
            await call.done_writing()
        finally:
            await channel.close()
        assert target.engine.get("customers", "stolen") is None
        assert (
            metric(
                target, "domicile_replication_refused_total", {"source": "eu-west-1", "target": "us-east-1"}
            )
            == 1
        )
        (entry,) = await audited(target, action="replicate_receive", key="stolen")
        assert entry.decision == "refuse" and entry.rule.startswith("gdpr")
        assert entry.principal == "node:eu-west-1" and entry.namespace == "customers"
        _, subject_key = load_or_create_keys(Path(target.config.data_dir))
        assert entry.subject == subject_hash(subject_key, "c-77")
    finally:
        await cluster.stop()


async def test_a_tightening_is_reported_by_the_scanner_and_reads_follow_the_new_rule(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=sample_pack(), namespaces=NAMESPACES_WITH_CUSTOMERS
    )
    await cluster.start()
    try:
        await cluster.wait_linked()
        await put(cluster, "eu-west-1", "de-3", "DE", content_type="application/json")
        await eventually(lambda: _holds(cluster, "us-east-1", "de-3"), what="de-3 at us-east-1 (DPF)")
        us = cluster.nodes["us-east-1"]
        assert (await us.compliance_scan(0, "test")).violations_total == 0

        # The DPF certification lapses, and the operator chooses redaction for refused reads.
        tightened = with_fact(sample_pack(), "2026-11-27.no-dpf", DPF, False)
        set_read_refused(tightened, "personal", ["value", "subject_id"])
        await cluster.change_policy(tightened)

        async def reported() -> bool:
            return metric(us, "domicile_compliance_violations") == 1

        await eventually(reported, what="the scan after the policy change")
        report = await us.compliance_scan(0, "test")
        (violation,) = report.violations
        assert (violation.namespace, violation.key, violation.region) == ("customers", "de-3", "us-east-1")
        assert violation.origin_region == "eu-west-1" and violation.rule.startswith("gdpr")
        assert set(violation.allowed_regions) == {"eu-west-1", "eu-central-1", "ap-northeast-1"}
        # Reported, not removed.
        assert await _holds(cluster, "us-east-1", "de-3")
        assert await audited(us, action="policy_change")

        got = await cluster.get("us-east-1", "customers", "de-3")
        (version,) = got.versions
        assert list(version.redacted_fields) == ["value", "subject_id"]
        assert version.value == b"" and version.subject_id == "" and not version.checksum_sha256
        assert version.subject_jurisdiction == "DE" and version.content_type == "application/json"
        assert (await audited(us, action="read", key="de-3"))[-1].decision == "redact"

        # Without redaction the read is refused, naming where it may be read.
        refusing = with_fact(sample_pack(), "2026-11-27.no-dpf-refuse", DPF, False)
        await cluster.change_policy(refusing)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.get("us-east-1", "customers", "de-3")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "may not serve this record" in (info.value.details() or "")
        allowed = dict(info.value.trailing_metadata() or ())[ALLOWED_REGIONS_KEYS[0]]
        assert allowed == "eu-west-1,eu-central-1,ap-northeast-1"
        assert (await audited(us, action="read", key="de-3"))[-1].decision == "refuse"
        # The EU copy reads in full.
        assert (await cluster.values("eu-west-1", "customers", "de-3")) == {b"profile of de-3"}
    finally:
        await cluster.stop()
