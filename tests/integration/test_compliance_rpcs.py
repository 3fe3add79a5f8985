"""Bad input to the compliance RPCs gets the right status and a message that says what is
allowed, and changes nothing; accepted audit heads survive a coordinator restart."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit import sign_head
from domicile.identity import audit_key
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.audit import head_to_pb
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark
from tests.support.tls import session_pki


@functools.cache
def node_key(region: str) -> Ed25519PrivateKey:
    """The audit-head key the node's certificate binds: the only key its heads may carry."""
    return audit_key.load_key(audit_key.key_path(session_pki().node(region, region).cert))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start_coordinator()
    try:
        yield cluster
    finally:
        await cluster.stop()


def export_request(
    size: int, last: bytes = b"\x01" * 32, region: str = "us-east-1"
) -> cpb.ExportAuditHeadRequest:
    head = sign_head(node_key(region), region=region, node_id=region, size=size, head=last, time_ms=5)
    request = cpb.ExportAuditHeadRequest()
    head_to_pb(head, request.head)
    return request


async def test_audit_heads_are_checked_kept_and_survive_a_restart(cluster: LocalCluster) -> None:
    # A region's head is accepted only from a node of that region (its certificate says so).
    async with (
        cluster.channel_as_node("us-east-1", cluster.coordinator_address) as channel,
        cluster.coordinator_channel() as auditor,
    ):
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await cpb_grpc.CoordinatorServiceStub(auditor).GetAuditHead(
                cpb.GetAuditHeadRequest(region="us-east-1"), timeout=5
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await stub.ExportAuditHead(export_request(4), timeout=5)).accepted_size == 4
        cases = [
            (export_request(3), grpc.StatusCode.FAILED_PRECONDITION, "shrank from 4 to 3"),
            (export_request(4, b"\x02" * 32), grpc.StatusCode.FAILED_PRECONDITION, "rewritten"),
            (
                export_request(1, region="mars-1"),
                grpc.StatusCode.PERMISSION_DENIED,
                "only by node mars-1 of region mars-1",
            ),
            (cpb.ExportAuditHeadRequest(), grpc.StatusCode.INVALID_ARGUMENT, "needs a head"),
        ]
        for request, code, text in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ExportAuditHead(request, timeout=5)
            assert info.value.code() == code and text in (info.value.details() or ""), info.value
    # Neither a client, however many roles it holds, nor a node of another region, nor another
    # node of the same region may export it: only the node the head names.
    for channel in (
        cluster.coordinator_channel(),
        cluster.channel_as_node("eu-west-1", cluster.coordinator_address),
        cluster.channel_as_node("us-east-1", cluster.coordinator_address, node_id="us-east-1b"),
    ):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cpb_grpc.CoordinatorServiceStub(channel).ExportAuditHead(export_request(5), timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may be called only by node us-east-1 of region us-east-1" in (info.value.details() or "")
    await cluster.stop_coordinator()
    await cluster.start_coordinator()
    async with (
        cluster.channel_as_node("us-east-1", cluster.coordinator_address) as channel,
        cluster.coordinator_channel() as auditor,
    ):
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        kept = await cpb_grpc.CoordinatorServiceStub(auditor).GetAuditHead(
            cpb.GetAuditHeadRequest(region="us-east-1"), timeout=5
        )
        assert kept.head.size == 4 and kept.head.head == b"\x01" * 32
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ExportAuditHead(export_request(2), timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_scan_compliance_limits_its_answer(cluster: LocalCluster) -> None:
    await cluster.start_node("eu-west-1")
    stub = cluster.stub("eu-west-1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ScanCompliance(spb.ScanComplianceRequest(violations_max=10_001), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use 1 to 10000" in (info.value.details() or "")
    report = await stub.ScanCompliance(spb.ScanComplianceRequest(), timeout=5)
    assert report.region == "eu-west-1" and report.violations_total == 0


async def test_reading_the_audit_log_is_audited(cluster: LocalCluster) -> None:
    node = await cluster.start_node("eu-west-1")
    stub = cluster.stub("eu-west-1")
    before = await audit_mark(node)
    responses = [r async for r in stub.ReadAuditLog(spb.ReadAuditLogRequest(), timeout=5)]
    assert responses[0].head.size == before + 1
    records = [rec for r in responses for rec in r.records]
    assert [r.seq for r in records] == list(range(1, before + 2))
    assert b'"audit_read"' in records[-1].body
