"""The SDK's audit, compliance and erasure calls over real gRPC against the stand-in servers of
test_client_wire: paging of the audit log, the exported head, compliance reports, the new
Delete fields, redacted reads and the new status counters."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from domicile.audit import verify_log
from domicile.client import AsyncClient, Client, ReadVersion
from domicile.errors import InvalidArgument, Unavailable
from domicile.model import Classification
from domicile.v1 import storage_node_pb2 as spb
from tests.unit.test_client_wire import FAST, FakeCluster


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def client(cluster: FakeCluster) -> Iterator[Client]:
    with Client(cluster.coordinator_address, insecure=True, deadline_s=5.0, retry=FAST) as c:
        yield c


# -- ReadAuditLog


def test_the_whole_log_is_read_page_by_page_from_one_node(cluster, client):
    entries, _ = cluster.give_audit_log("eu-west-1", 25)
    head, read = client.read_audit_log("eu-west-1", page_entries=10)
    # The first page is fetched eagerly so that the head is known before the entries.
    assert cluster.nodes["eu-west-1"].calls == ["ReadAuditLog"]
    assert head is not None and head.size == 25 and head.signature_valid()
    assert list(read) == entries
    requests = cluster.nodes["eu-west-1"].audit_requests
    assert [(r.after_seq, r.limit, r.tail) for r in requests] == [
        (0, 10, False),
        (10, 10, False),
        (20, 10, False),
    ]
    assert verify_log(entries, head, trusted_public_key=head.public_key).ok
    assert cluster.regions_called("ReadAuditLog") == ["eu-west-1"]


def test_after_seq_and_limit_bound_the_read(cluster, client):
    entries, _ = cluster.give_audit_log("us-east-1", 30)
    _, read = client.read_audit_log("us-east-1", after_seq=5, limit=12, page_entries=5)
    assert [e.seq for e in read] == list(range(6, 18))
    assert list(client.read_audit_log("us-east-1", after_seq=30)[1]) == []
    assert list(client.read_audit_log("us-east-1", after_seq=28)[1]) == entries[28:]


def test_a_tail_read_is_one_call_for_the_last_entries(cluster, client):
    entries, _ = cluster.give_audit_log("us-east-1", 30)
    head, read = client.read_audit_log("us-east-1", limit=4, tail=True)
    assert list(read) == entries[-4:]
    assert head is not None and head.size == 30
    assert [(r.limit, r.tail) for r in cluster.nodes["us-east-1"].audit_requests] == [(4, True)]


def test_paging_continues_across_deleted_entries(cluster, client):
    entries, _ = cluster.give_audit_log("us-east-1", 30)
    node = cluster.nodes["us-east-1"]
    # Entries 4..15 deleted: a whole page of positions returns nothing; the read must go on.
    node.audit_log = entries[:3] + entries[15:]
    _, read = client.read_audit_log("us-east-1", page_entries=5)
    got = list(read)
    assert [e.seq for e in got] == [1, 2, 3, *range(16, 31)]
    report = verify_log(got, node.audit_head)
    assert [p.kind for p in report.problems][:1] == ["missing"]


def test_the_read_ends_at_the_head_of_its_first_page(cluster, client):
    cluster.give_audit_log("us-east-1", 12)
    node = cluster.nodes["us-east-1"]
    head, read = client.read_audit_log("us-east-1", page_entries=5)
    # The log grows while it is read (reads are audited): the entries after the first head are
    # not part of this read.
    more, _ = cluster.give_audit_log("us-east-1", 20)
    node.audit_log = more
    assert head is not None and head.size == 12
    assert [e.seq for e in read] == list(range(1, 13))


def test_an_empty_log_reads_as_nothing(cluster, client):
    head, read = client.read_audit_log("eu-central-1")
    assert head is None and list(read) == []


def test_audit_read_arguments_are_checked(client):
    with pytest.raises(InvalidArgument, match="a tail read needs a limit of 1 to 10000"):
        client.read_audit_log("us-east-1", tail=True)
    with pytest.raises(InvalidArgument, match="after_seq is -1"):
        client.read_audit_log("us-east-1", after_seq=-1)
    with pytest.raises(InvalidArgument, match="page_entries is 0"):
        client.read_audit_log("us-east-1", page_entries=0)
    with pytest.raises(InvalidArgument, match="a region name is required"):
        client.read_audit_log("")
    with pytest.raises(InvalidArgument, match="unknown region 'mars'"):
        client.read_audit_log("mars")


def test_a_failed_page_is_retried(cluster, client):
    entries, _ = cluster.give_audit_log("us-east-1", 8)
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.UNAVAILABLE]
    _, read = client.read_audit_log("us-east-1", page_entries=5)
    assert list(read) == entries


# -- GetAuditHead


def test_audit_head_is_the_coordinators_last_accepted_head(cluster, client):
    cluster.give_audit_log("eu-west-1", 20, exported=15, accepted_unix_ms=1_790_000_500_000)
    head, accepted = client.audit_head("eu-west-1")
    assert head is not None and head.size == 15 and head.region == "eu-west-1"
    assert head.signature_valid()
    assert accepted == 1_790_000_500_000


def test_no_exported_head_is_none(client):
    assert client.audit_head("eu-west-1") == (None, 0)


def test_audit_head_checks_the_region_and_retries_the_coordinator(cluster, client):
    with pytest.raises(InvalidArgument, match="unknown region 'mars'; regions: us-east-1"):
        client.audit_head("mars")
    cluster.give_audit_log("eu-west-1", 3, exported=3)
    cluster.coordinator.failures = [grpc.StatusCode.UNAVAILABLE]
    assert client.audit_head("eu-west-1")[0] is not None
    cluster.coordinator.failures = [grpc.StatusCode.UNAVAILABLE] * FAST.attempts_max
    with pytest.raises(Unavailable, match="coordinator at"):
        client.audit_head("eu-west-1")


# -- ScanCompliance


def _violations(region: str, count: int) -> spb.ScanComplianceResponse:
    resp = spb.ScanComplianceResponse(
        region=region, policy_version="p2", versions_checked=100, violations_total=count
    )
    for i in range(count):
        resp.violations.add(
            namespace="customers",
            key=f"c-{i}",
            region=region,
            origin_region="eu-west-1",
            classification=Classification.PERSONAL,
            subject_jurisdiction="CN",
            rule="pipl.no-transfer-basis",
            reason="personal data of a subject in CN (PIPL) may not be stored here",
        )
    return resp


def test_scan_compliance_reports_violations_as_domain_types(cluster, client):
    cluster.nodes["us-east-1"].compliance = _violations("us-east-1", 3)
    report = client.scan_compliance("us-east-1", violations_max=2)
    assert cluster.nodes["us-east-1"].compliance_requests[0].violations_max == 2
    assert (report.region, report.node_id, report.policy_version) == ("us-east-1", "us-east-1", "p2")
    assert (report.versions_checked, report.violations_total) == (100, 3)
    assert not report.compliant and report.violations_unlisted == 1
    first = report.violations[0]
    assert first.classification is Classification.PERSONAL and first.key == "c-0"
    assert first.allowed_regions == () and first.subject_jurisdiction == "CN"
    assert client.scan_compliance("eu-west-1").compliant


def test_scan_compliance_arguments_are_checked(client):
    with pytest.raises(InvalidArgument, match="violations_max is 0; use 1 to 10000"):
        client.scan_compliance("us-east-1", violations_max=0)
    with pytest.raises(InvalidArgument, match="deadline_s is -1"):
        client.scan_compliance("us-east-1", deadline_s=-1)


# -- Delete, Get, GetNodeStatus


def test_delete_sends_the_subject_for_a_record_the_node_does_not_hold(cluster, client):
    client.delete("customers_eu", "c-9", subject_id="c-9", subject_jurisdiction="DE")
    client.delete("customers_eu", "c-8")
    sent = cluster.nodes["eu-west-1"].deletes
    assert [(d.subject_id, d.subject_jurisdiction) for d in sent] == [("c-9", "DE"), ("", "")]
    with pytest.raises(InvalidArgument, match="subject_jurisdiction must be a str"):
        client.delete("customers_eu", "c-8", subject_jurisdiction=49)  # type: ignore[arg-type]


def test_redacted_reads_name_the_removed_fields(cluster, client):
    client.put("instruments", "k", b"secret", subject_id="s-1")
    plain = client.get("instruments", "k").versions[0]
    assert isinstance(plain, ReadVersion) and plain.redacted_fields == () and not plain.redacted
    cluster.nodes["us-east-1"].redact = ("value", "subject_id")
    # The stored value's checksum does not match the empty value: no corruption is reported.
    redacted = client.get("instruments", "k").versions[0]
    assert redacted.redacted_fields == ("value", "subject_id") and redacted.redacted
    assert redacted.value == b"" and redacted.subject_id == ""


def test_node_status_carries_the_audit_and_compliance_counters(cluster, client):
    cluster.give_audit_log("eu-west-1", 7, exported=5)
    cluster.nodes["eu-west-1"].compliance = _violations("eu-west-1", 2)
    status = client.node_status("eu-west-1")
    assert (status.audit_entries, status.audit_exported_size, status.compliance_violations) == (7, 5, 2)


# -- the asyncio client


async def test_async_audit_and_compliance_calls(cluster):
    entries, _ = cluster.give_audit_log("eu-west-1", 13, exported=10)
    cluster.nodes["eu-central-1"].compliance = _violations("eu-central-1", 1)
    async with AsyncClient(cluster.coordinator_address, insecure=True, retry=FAST) as client:
        head, read = await client.read_audit_log("eu-west-1", page_entries=4)
        assert head is not None and head.size == 13
        assert [e async for e in read] == entries
        _, tail = await client.read_audit_log("eu-west-1", limit=2, tail=True)
        assert [e.seq async for e in tail] == [12, 13]
        exported, accepted = await client.audit_head("eu-west-1")
        assert exported is not None and exported.size == 10 and accepted > 0
        assert await client.audit_head("us-east-1") == (None, 0)
        report = await client.scan_compliance("eu-central-1")
        assert report.violations_total == 1 and report.violations[0].rule == "pipl.no-transfer-basis"
        await client.delete("customers_eu", "c-1", subject_id="c-1", subject_jurisdiction="FR")
    assert cluster.nodes["eu-west-1"].deletes[0].subject_jurisdiction == "FR"
