"""A certificate the cluster's revocation list revokes authenticates nothing any more: on every
node and the coordinator, from the next call, within a second, on connections already open too,
without a restart; everyone else goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domicile.identity import revocation
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster
from tests.support.tls import SessionPki

REGION = "eu-west-1"
WAIT_S = 10.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    # A CA of its own: the revocation list written here must not reach other tests' daemons.
    cluster = LocalCluster(tmp_path, [REGION], pki=SessionPki())
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def serial_of(files: TlsFiles) -> int:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number


def revoke(cluster: LocalCluster, *serials: int) -> None:
    assert cluster.pki is not None
    ca = cluster.pki.ca
    revocation.revoke(ca.certificate, ca.key, cluster.pki.directory, serials)


async def node_status(channel: grpc.aio.Channel) -> None:
    await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)


async def topology(channel: grpc.aio.Channel) -> None:
    await cpb_grpc.CoordinatorServiceStub(channel).GetTopology(cpb.GetTopologyRequest(), timeout=5)


async def erased_subjects(channel: grpc.aio.Channel) -> None:
    """A read-only call of the nodes' control plane."""
    stub = cpb_grpc.CoordinatorServiceStub(channel)
    await stub.ListErasedSubjects(cpb.ListErasedSubjectsRequest(), timeout=5)


async def refused_within(call: object, channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """The error of `call(channel)` once it fails, within WAIT_S."""
    assert callable(call)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            await call(channel)
        except grpc.aio.AioRpcError as error:
            return error
        if time.monotonic() > deadline:
            raise AssertionError(f"still allowed {WAIT_S} s after the revocation")
        await asyncio.sleep(0.05)


async def test_a_revoked_client_is_refused_everywhere_and_others_go_on(cluster: LocalCluster) -> None:
    assert cluster.pki is not None
    node = cluster.nodes[REGION]
    files = cluster.pki.client("leaver", (Role.APP, Role.OPERATOR))
    dialer = Dialer.mutual_tls(files)
    to_node = dialer.channel(node.address, ExpectedPeer.node(REGION, REGION))
    to_coordinator = dialer.channel(cluster.coordinator_address, ExpectedPeer.coordinator())
    try:
        # Allowed before: the negative control of the refusals below.
        await node_status(to_node)
        await topology(to_coordinator)
        revoke(cluster, serial_of(files))
        for call, channel in ((node_status, to_node), (topology, to_coordinator)):
            error = await refused_within(call, channel)  # the connections opened before
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert f"spiffe://domicile/client/leaver (serial 0x{serial_of(files):x}) is revoked" in (
                error.details() or ""
            )
        fresh = Dialer.mutual_tls(files).channel(node.address, ExpectedPeer.node(REGION, REGION))
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await node_status(fresh)
        await fresh.close()
        assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await to_node.close()
        await to_coordinator.close()
    # Everyone else goes on.
    assert (await cluster.stub(REGION).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)).node_id == REGION
    counted = node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "storage.GetNodeStatus", "reason": "revoked"}
    )
    assert counted is not None and counted >= 2


async def test_a_revoked_node_certificate_is_refused_as_a_caller(cluster: LocalCluster) -> None:
    """A node key that leaked: calls made with it (as replication and registration make them)
    are refused by the coordinator like any client's."""
    assert cluster.pki is not None
    channel = cluster.channel_as_node(REGION, cluster.coordinator_address)
    try:
        await erased_subjects(channel)
        revoke(cluster, serial_of(cluster.pki.node(REGION, REGION)))
        error = await refused_within(erased_subjects, channel)
    finally:
        await channel.close()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "is revoked by the cluster's revocation list" in (error.details() or "")


async def test_a_watch_opened_before_the_revocation_ends_at_its_next_message(cluster: LocalCluster) -> None:
    """A stream outlives the check at its start: a topology watch of a leaked node key must not
    go on receiving topologies (nor a subject-orders watch the orders that name subjects)."""
    assert cluster.pki is not None
    ghost = cluster.pki.node(REGION, "ghost")
    channel = Dialer.mutual_tls(ghost).channel(cluster.coordinator_address, ExpectedPeer.coordinator())
    try:
        call = cpb_grpc.CoordinatorServiceStub(channel).WatchTopology(cpb.WatchTopologyRequest())
        first = await asyncio.wait_for(call.read(), WAIT_S)
        revoke(cluster, serial_of(ghost))
        await refused_within(erased_subjects, channel)  # the list is in force
        # A new revision: another node registers.
        other = cluster.channel_as_node(REGION, cluster.coordinator_address, "other")
        async with other:
            await cpb_grpc.CoordinatorServiceStub(other).RegisterNode(
                cpb.RegisterNodeRequest(node_id="other", region=REGION, address="10.0.0.9:7401"), timeout=5
            )
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            message = await asyncio.wait_for(call.read(), WAIT_S)
            raise AssertionError(f"the revoked watch got revision {message.topology.revision}")
        assert first.topology.revision >= 1
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "was revoked by the cluster's revocation list while this stream was open" in (
            ended.value.details() or ""
        )
    finally:
        await channel.close()


async def test_health_answers_a_revoked_operator_unauthenticated(cluster: LocalCluster) -> None:
    assert cluster.pki is not None
    files = cluster.pki.client("ops", (Role.OPERATOR,))
    channel = Dialer.mutual_tls(files).channel(
        cluster.nodes[REGION].address, ExpectedPeer.node(REGION, REGION)
    )

    async def health(channel: grpc.aio.Channel) -> None:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    try:
        await health(channel)
        revoke(cluster, serial_of(files))
        error = await refused_within(health, channel)
    finally:
        await channel.close()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "is revoked" in (error.details() or "")


async def test_a_forged_list_changes_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    """A list the CA did not sign is not read: what was revoked stays revoked, and what was not
    stays allowed (the daemons log the fault and keep the list in force)."""
    assert cluster.pki is not None
    node = cluster.nodes[REGION]
    files = cluster.pki.client("leaver", (Role.APP,))
    revoke(cluster, serial_of(files))
    channel = Dialer.mutual_tls(files).channel(node.address, ExpectedPeer.node(REGION, REGION))
    try:
        await refused_within(node_status, channel)
        forger = SessionPki()
        revocation.revoke(forger.ca.certificate, forger.ca.key, forger.directory, [1])
        (cluster.pki.directory / revocation.CA_CRL).write_bytes(
            (forger.directory / revocation.CA_CRL).read_bytes()
        )
        await asyncio.sleep(revocation.REVOCATION_LOOK_S * 2)
        with pytest.raises(grpc.aio.AioRpcError) as still:
            await node_status(channel)
        assert still.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
    # And what was not revoked stays allowed.
    assert (await cluster.stub(REGION).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)).node_id == REGION
