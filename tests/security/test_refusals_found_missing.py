"""Refusals that must hold over mutual TLS, each found missing once: a status request that would
read another owner's values, a streaming storage request past the storage bound, refusals
that went uncounted or unaudited, and a client's watch that moved the cluster's revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.identity.principal import ExpectedPeer, Role
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.limits import STORAGE_REQUEST_BYTES_MAX
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark, coordinator_refusals, denial, entries_since
from tests.support.tls import CLUSTER

REGION = "eu-west-1"
MIB = 1024 * 1024


@pytest.fixture
async def one_node(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A coordinator and one EU node over mutual TLS."""
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start_coordinator()
    await cluster.start_node(REGION)
    try:
        yield cluster
    finally:
        await cluster.stop()


def _stub_as(cluster: LocalCluster, channel_name: str, *roles: Role) -> grpc.aio.Channel:
    assert cluster.pki is not None
    node = cluster.nodes[REGION]
    return cluster.pki.dialer(channel_name, roles).channel(node.address, ExpectedPeer.node(REGION, REGION))


async def test_an_app_that_owns_nothing_cannot_probe_values_of_a_namespace_it_may_not_read(
    one_node: LocalCluster,
) -> None:
    """Regression: the default policies let every `app` call GetNodeStatus, and its
    candidate_schemas made the node open every stored value of the named namespace and count
    those failing an arbitrary JSON Schema: with `const` or `pattern`, an oracle over the values
    of a namespace the caller may not Get. Now each named namespace needs a read of its records,
    and the store walk a compliance scan's permission (the coordinator may ask for both)."""
    # A record of the tests' own app (owner of customers_eu), about an EU data subject.
    await one_node.put(
        REGION,
        "customers_eu",
        "c-1001",
        b'{"name": "Anna", "iban": "DE89370400440532013000"}',
        content_type="application/json",
        subject_id="c-1001",
        subject_jurisdiction="DE",
    )
    async with _stub_as(one_node, "outsider", Role.APP) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        # Control: the outsider may not read the record.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Get(spb.GetRequest(namespace="customers_eu", key="c-1001"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        async def invalid_count(schema: str) -> int:
            response = await stub.GetNodeStatus(
                spb.GetNodeStatusRequest(candidate_schemas={"customers_eu": schema}), timeout=10
            )
            return sum(s.candidate_invalid for s in response.namespace_stats if s.namespace == "customers_eu")

        for stats in (False, True):
            seq = await audit_mark(one_node.nodes[REGION])
            with pytest.raises(grpc.aio.AioRpcError) as probed:
                await stub.GetNodeStatus(
                    spb.GetNodeStatusRequest(
                        namespace_stats=stats,
                        candidate_schemas={"customers_eu": '{"properties": {"name": {"const": "Anna"}}}'},
                    ),
                    timeout=10,
                )
            assert probed.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # Counted and audited like every refusal.
            outsider = f"spiffe://{CLUSTER}/client/outsider"
            await denial(one_node.nodes[REGION], seq, "storage.ScanCompliance", outsider)
        # The plain status is still the app's to read.
        assert (await stub.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=10)).node_id
    # Negative control: the tests' client (owner of customers_eu, auditor too) may ask.
    response = await one_node.stub(REGION).GetNodeStatus(
        spb.GetNodeStatusRequest(
            candidate_schemas={"customers_eu": '{"properties": {"name": {"const": "Bob"}}}'}
        ),
        timeout=10,
    )
    assert sum(s.candidate_invalid for s in response.namespace_stats if s.namespace == "customers_eu") == 1


async def test_an_oversized_read_audit_log_request_is_refused_like_any_storage_request(
    one_node: LocalCluster,
) -> None:
    """Regression: the storage request bound (4 MiB, RESOURCE_EXHAUSTED before it is decoded)
    held only for unary calls, so ReadAuditLog and ExportSubject, which stream their answers,
    decoded requests up to the server-wide 32 MiB replication bound."""
    padding = b"x" * (STORAGE_REQUEST_BYTES_MAX + MIB)
    # Field 15, wire type 2 (length-delimited), unknown to ReadAuditLogRequest: kept and re-sent.
    unknown = bytes([15 << 3 | 2]) + _varint(len(padding)) + padding
    request = spb.ReadAuditLogRequest.FromString(
        spb.ReadAuditLogRequest(tail=True, limit=1).SerializeToString() + unknown
    )
    assert request.ByteSize() > STORAGE_REQUEST_BYTES_MAX
    stub = one_node.stub(REGION)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.ReadAuditLog(request, timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert "accepts at most" in (info.value.details() or "")
    # Negative control: the same request within the bound is answered.
    answers = [a async for a in stub.ReadAuditLog(spb.ReadAuditLogRequest(tail=True, limit=1), timeout=10)]
    assert answers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


async def test_an_auditors_refused_repair_is_audited_and_counted_like_every_refusal(
    one_node: LocalCluster,
) -> None:
    """Regression: an auditor's repair was refused PERMISSION_DENIED without the gate, so it was
    neither written to the audit trail nor counted in domicile_authz_refusals_total."""
    node = one_node.nodes[REGION]
    seq = await audit_mark(node)
    async with _stub_as(one_node, "auditor-probe", Role.AUDITOR) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckConsistency(
                spb.CheckConsistencyRequest(peer_node_id="eu-central-1", repair=True), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    counted = node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "storage.CheckConsistency", "reason": "policy"}
    ) or node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "storage.CheckConsistency", "reason": "wrong_peer"}
    )
    entries = [(e.action, e.principal, e.detail) for e in await entries_since(node, seq)]
    assert counted, f"refusal not counted; audit entries since: {entries}"
    await denial(node, seq, "storage.CheckConsistency", f"spiffe://{CLUSTER}/client/auditor-probe")


async def test_a_refused_watch_of_a_regions_backup_section_is_counted_at_the_coordinator(
    one_node: LocalCluster,
) -> None:
    """Regression: an operator asking for a region's backup section was refused after the gate,
    so the coordinator neither counted nor logged it."""

    assert one_node.pki is not None
    before = sum(
        coordinator_refusals(one_node, "coordinator.WatchTopology", reason)
        for reason in ("policy", "wrong_peer")
    )
    dialer = one_node.pki.dialer("ops-probe", (Role.OPERATOR,))
    async with dialer.channel(one_node.coordinator_address, ExpectedPeer.coordinator()) as channel:
        call = cpb_grpc.CoordinatorServiceStub(channel).WatchTopology(
            cpb.WatchTopologyRequest(region=REGION), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    after = sum(
        coordinator_refusals(one_node, "coordinator.WatchTopology", reason)
        for reason in ("policy", "wrong_peer")
    )
    assert after == before + 1, (before, after, refused.value.details())


async def test_an_operators_watch_does_not_move_the_clusters_topology_revision(
    one_node: LocalCluster,
) -> None:
    """Regression: catching up with a revision ahead of the coordinator's is for a node that saw
    one before the coordinator lost its state; a client's watch did it too, so an operator could
    commit and publish a revision of 2^62 in one call."""

    assert one_node.pki is not None and one_node.coordinator is not None
    registry = one_node.coordinator.registry
    before = registry.topology().revision
    dialer = one_node.pki.dialer("ops-watch", (Role.OPERATOR,))
    async with dialer.channel(one_node.coordinator_address, ExpectedPeer.coordinator()) as channel:
        call = cpb_grpc.CoordinatorServiceStub(channel).WatchTopology(
            cpb.WatchTopologyRequest(after_revision=2**62 - 1), timeout=5
        )
        # Nothing newer than the revision it claims to have seen is sent to it.
        try:
            message = await asyncio.wait_for(call.read(), 1.0)
        except TimeoutError:
            message = None
        call.cancel()
    after = registry.topology().revision
    # The cluster's own changes (the node's registration) may move it by a step or two meanwhile.
    assert after < before + 100, (
        f"an operator's WatchTopology moved the topology revision from {before} to {after}"
        + (f" (sent revision {message.topology.revision})" if message else "")
    )
    assert message is None, "nothing newer than the revision it claimed was sent"
