"""Health and reflection answer the cluster's nodes, its coordinator and clients that run or
watch it (monitor, operator, auditor), not every holder of a cluster certificate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def as_client(cluster: LocalCluster, name: str, roles: tuple[Role, ...], address: str) -> grpc.aio.Channel:
    assert cluster.pki is not None
    return Dialer.mutual_tls(cluster.pki.client(name, roles)).channel(address)


async def health(channel: grpc.aio.Channel) -> int:
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(response.status)


async def reflect(channel: grpc.aio.Channel) -> list[str]:
    async with channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        return [s.name for s in response.list_services_response.service]


async def reflection_refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """Opens a reflection stream and waits for its status without writing: the gate refuses
    before the handler reads a request, and a write racing that refusal fails on the client with
    INTERNAL ("Failed execute_batch"), which hides the status the server sent."""
    async with channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        return refused.value


async def test_regression_an_app_may_not_probe_health_or_reflection(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    for address in (node.address, cluster.coordinator_address):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health(as_client(cluster, "some-app", (Role.APP,), address))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "grpc.health.v1.Health.Check" in (refused.value.details() or "")
    reflection = await reflection_refused(as_client(cluster, "some-app", (Role.APP,), node.address))
    assert reflection.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ServerReflectionInfo" in (reflection.details() or "")
    counted = node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "grpc.health.v1.Health.Check", "reason": "wrong_peer"}
    )
    assert counted == 1


async def test_operators_auditors_and_nodes_may(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    serving = health_pb2.HealthCheckResponse.SERVING
    assert await health(as_client(cluster, "ops", (Role.OPERATOR,), node.address)) == serving
    assert (
        await health(as_client(cluster, "watcher", (Role.AUDITOR,), cluster.coordinator_address)) == serving
    )
    assert await health(cluster.channel_as_node(REGION, cluster.coordinator_address)) == serving
    assert await health(as_client(cluster, "prometheus", (Role.MONITOR,), node.address)) == serving
    services = await reflect(as_client(cluster, "ops", (Role.OPERATOR,), node.address))
    assert "domicile.v1.StorageNodeService" in services


async def test_regression_a_monitor_calls_no_rpc_and_is_told_so(cluster: LocalCluster) -> None:
    """The monitor role reads /metrics and health only. Its refusals are PERMISSION_DENIED with the
    policy's reason, not a failure of the gate: the gate maps each certificate role to a policy role,
    and a role missing there failed the call with INTERNAL."""
    node = cluster.nodes[REGION]
    async with as_client(cluster, "prometheus", (Role.MONITOR,), cluster.coordinator_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cpb_grpc.CoordinatorServiceStub(channel).GetTopology(cpb.GetTopologyRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "with roles [monitor] may not call coordinator.GetTopology" in (refused.value.details() or "")
    async with as_client(cluster, "prometheus", (Role.MONITOR,), node.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            stub = spb_grpc.StorageNodeServiceStub(channel)
            await stub.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "with roles [monitor] may not call storage.GetNodeStatus" in (refused.value.details() or "")


@pytest.mark.parametrize("where", ["node", "coordinator"])
async def test_regression_health_watch_answers_through_the_guards(cluster: LocalCluster, where: str) -> None:
    """grpc's health Watch writes its answers (context.write) rather than yielding them; the
    guards iterated over it and failed every Watch of a daemon that enforces identity."""
    address = cluster.nodes[REGION].address if where == "node" else cluster.coordinator_address
    async with as_client(cluster, "ops", (Role.OPERATOR,), address) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        first = await call.read()
        call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
