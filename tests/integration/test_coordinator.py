"""The coordinator daemon against a real grpc.aio server on a free port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coordinator import Coordinator, CoordinatorConfig
from coordinator.config import CoordinatorLimits, config_from_args
from coordinator.watch import WatchHub
from domicile.cluster import ClusterSpec
from domicile.errors import FailedPrecondition, InvalidArgument
from domicile.ports import free_port
from domicile.topology import NodeHealth, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc

RPC_TIMEOUT_S = 5.0
HEARTBEAT_INTERVAL_MS = 100
MISSED_HEARTBEATS_MAX = 3
EXPIRY_S = HEARTBEAT_INTERVAL_MS * MISSED_HEARTBEATS_MAX / 1000

CLUSTER_YAML = f"""
policy_version: scope-test-1
coordinator:
  heartbeat_interval_ms: {HEARTBEAT_INTERVAL_MS}
  missed_heartbeats_max: {MISSED_HEARTBEATS_MAX}
retention_classes:
  reference_data: {{period: 0, basis: reference data}}
regions:
  - {{name: us-east-1, country: US, jurisdiction: US}}
  - {{name: eu-west-1, country: IE, jurisdiction: EU}}
  - {{name: eu-central-1, country: DE, jurisdiction: EU}}
  - {{name: ap-northeast-1, country: JP, jurisdiction: JP}}
namespaces:
  - name: catalog
    regions: global
    conflict_mode: lww
    classification: public
    owner: catalog-team
    retention_class: reference_data
    description: Instruments
  - name: eu_users
    regions: [eu-west-1, eu-central-1]
    classification: personal
    owner: eu-team
    retention_class: user_data
  - name: jp_orders
    regions: [ap-northeast-1]
    classification: financial
"""


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def cluster_path(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_YAML)
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_800_000_000.0)


class Harness:
    """Starts coordinators on free ports sharing one data dir and stops them all at the end."""

    def __init__(self, tmp_path: Path, cluster_path: Path, clock: FakeClock, wall: FakeClock) -> None:
        self.config = CoordinatorConfig(
            cluster_config=cluster_path,
            listen="127.0.0.1:0",
            metrics_port=0,
            data_dir=tmp_path / "data",
            shutdown_grace_s=1.0,
            # The registry's rules, not identities, are under test here: any caller may play any node.
            insecure=True,
        )
        self.clock = clock
        self.wall = wall
        self.started: list[Coordinator] = []
        self.channels: list[grpc.aio.Channel] = []

    async def start(self, **overrides) -> Coordinator:
        coordinator = Coordinator(replace(self.config, **overrides), clock=self.clock, wall_clock=self.wall)
        self.started.append(coordinator)
        await coordinator.start()
        return coordinator

    def channel(self, coordinator: Coordinator) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(coordinator.address)
        self.channels.append(channel)
        return channel

    def stub(self, coordinator: Coordinator) -> cpb_grpc.CoordinatorServiceStub:
        return cpb_grpc.CoordinatorServiceStub(self.channel(coordinator))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for coordinator in self.started:
            await coordinator.stop()


@pytest.fixture
async def harness(tmp_path, cluster_path, clock, wall):
    h = Harness(tmp_path, cluster_path, clock, wall)
    yield h
    await h.close()


@pytest.fixture
async def coord(harness: Harness) -> Coordinator:
    return await harness.start()


@pytest.fixture
def stub(harness: Harness, coord: Coordinator) -> cpb_grpc.CoordinatorServiceStub:
    return harness.stub(coord)


async def register(stub, node_id: str, region: str, address: str = "", metrics: str = "") -> int:
    response = await stub.RegisterNode(
        cpb.RegisterNodeRequest(
            node_id=node_id,
            region=region,
            address=address or f"10.0.0.{len(node_id)}:7401",
            metrics_address=metrics,
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return response.topology_revision


async def topology(stub) -> cpb.Topology:
    return (await stub.GetTopology(cpb.GetTopologyRequest(), timeout=RPC_TIMEOUT_S)).topology


async def heartbeat(stub, node_id: str) -> int:
    response = await stub.Heartbeat(cpb.HeartbeatRequest(node_id=node_id), timeout=RPC_TIMEOUT_S)
    return response.topology_revision


def nodes_by_id(topo: cpb.Topology) -> dict[str, cpb.Node]:
    return {n.node_id: n for n in topo.nodes}


def links_of(topo: cpb.Topology) -> dict[tuple[str, str], list[str]]:
    return {(li.source_node_id, li.target_node_id): list(li.namespaces) for li in topo.links}


async def next_message(call) -> cpb.WatchTopologyResponse:
    # The timeout only keeps a broken stream from hanging the suite; it asserts nothing.
    return await asyncio.wait_for(call.read(), timeout=RPC_TIMEOUT_S)


# --- registration and topology ----------------------------------------------------------------


async def test_a_store_older_than_the_nodes_last_restore_cannot_register(stub, harness, coord):
    def request(epoch: int) -> cpb.RegisterNodeRequest:
        return cpb.RegisterNodeRequest(
            node_id="eu-1", region="eu-west-1", address="10.0.0.1:7401", epoch=epoch
        )

    await stub.RegisterNode(request(0), timeout=RPC_TIMEOUT_S)
    await stub.RegisterNode(request(1_796_000_000), timeout=RPC_TIMEOUT_S)  # restored
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RegisterNode(request(0), timeout=RPC_TIMEOUT_S)  # the old store came back
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older than the node's last restore" in (refused.value.details() or "")
    await stub.RegisterNode(request(1_796_000_000), timeout=RPC_TIMEOUT_S)
    # The record survives a restart.
    await coord.stop()
    restarted = harness.stub(await harness.start())
    with pytest.raises(grpc.aio.AioRpcError):
        await restarted.RegisterNode(request(5), timeout=RPC_TIMEOUT_S)


async def test_register_returns_revision_and_heartbeat_interval(stub, wall):
    before = (await topology(stub)).revision
    response = await stub.RegisterNode(
        cpb.RegisterNodeRequest(
            node_id="eu-1", region="eu-west-1", address="10.0.0.1:7401", metrics_address="10.0.0.1:9401"
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert response.topology_revision > before
    assert response.heartbeat_interval_ms == HEARTBEAT_INTERVAL_MS
    topo = await topology(stub)
    assert topo.revision == response.topology_revision
    node = nodes_by_id(topo)["eu-1"]
    assert (node.region, node.address, node.metrics_address) == (
        "eu-west-1",
        "10.0.0.1:7401",
        "10.0.0.1:9401",
    )
    assert node.health == cpb.NODE_HEALTH_UP
    assert node.last_heartbeat_unix_ms == int(wall.now * 1000)


async def test_topology_carries_regions_namespaces_and_policy_version(stub):
    topo = await topology(stub)
    assert topo.revision >= 1
    assert topo.policy_version == "scope-test-1"
    assert [(r.name, r.country, r.jurisdiction) for r in topo.regions] == [
        ("us-east-1", "US", "US"),
        ("eu-west-1", "IE", "EU"),
        ("eu-central-1", "DE", "EU"),
        ("ap-northeast-1", "JP", "JP"),
    ]
    ns = {n.name: n for n in topo.namespaces}
    catalog = ns["catalog"]
    assert getattr(catalog, "global") is True
    assert list(catalog.regions) == []
    assert (catalog.owner, catalog.retention_class, catalog.description) == (
        "catalog-team",
        "reference_data",
        "Instruments",
    )
    eu = ns["eu_users"]
    assert getattr(eu, "global") is False
    assert list(eu.regions) == ["eu-west-1", "eu-central-1"]
    assert eu.conflict_mode == 1  # siblings
    assert eu.classification == 4  # personal
    assert catalog.conflict_mode == 2  # lww
    assert ns["jp_orders"].classification == 6  # financial


async def test_reregistration_without_change_keeps_revision_and_address_change_bumps_it(stub):
    first = await register(stub, "us-1", "us-east-1", "10.0.0.9:7401")
    assert await register(stub, "us-1", "us-east-1", "10.0.0.9:7401") == first
    moved = await register(stub, "us-1", "us-east-1", "10.0.0.10:7401")
    assert moved == first + 1
    assert nodes_by_id(await topology(stub))["us-1"].address == "10.0.0.10:7401"
    with_metrics = await register(stub, "us-1", "us-east-1", "10.0.0.10:7401", "10.0.0.10:9401")
    assert with_metrics == moved + 1


async def test_links_follow_namespace_scopes(stub):
    await register(stub, "us-1", "us-east-1")
    await register(stub, "eu-1", "eu-west-1")
    await register(stub, "eu-2", "eu-central-1")
    await register(stub, "jp-1", "ap-northeast-1")
    await register(stub, "jp-2", "ap-northeast-1")
    links = links_of(await topology(stub))
    nodes = ["eu-1", "eu-2", "jp-1", "jp-2", "us-1"]
    assert set(links) == {(s, t) for s in nodes for t in nodes if s != t}
    assert links[("eu-1", "eu-2")] == ["catalog", "eu_users"]
    assert links[("eu-2", "eu-1")] == ["catalog", "eu_users"]
    assert links[("jp-1", "jp-2")] == ["catalog", "jp_orders"]
    assert links[("jp-2", "jp-1")] == ["catalog", "jp_orders"]
    for (s, t), namespaces in links.items():
        if {s[:2], t[:2]} not in ({"eu"}, {"jp"}):
            assert namespaces == ["catalog"], (s, t)


# --- heartbeats and health ----------------------------------------------------------------------


async def test_heartbeat_that_changes_nothing_does_not_bump_revision(stub, wall):
    revision = await register(stub, "eu-1", "eu-west-1")
    wall.advance(1.5)
    assert await heartbeat(stub, "eu-1") == revision
    topo = await topology(stub)
    assert topo.revision == revision
    assert nodes_by_id(topo)["eu-1"].last_heartbeat_unix_ms == int(wall.now * 1000)


async def test_node_goes_down_after_missed_heartbeats_and_up_again(stub, coord, clock):
    await register(stub, "eu-1", "eu-west-1")
    revision = await register(stub, "eu-2", "eu-central-1")
    clock.advance(EXPIRY_S * 0.9)
    assert await heartbeat(stub, "eu-2") == revision
    assert await coord.check_health_now() == []
    assert (await topology(stub)).revision == revision

    clock.advance(EXPIRY_S * 0.2)
    assert await coord.check_health_now() == ["eu-1"]
    topo = await topology(stub)
    assert topo.revision == revision + 1
    assert nodes_by_id(topo)["eu-1"].health == cpb.NODE_HEALTH_DOWN
    assert nodes_by_id(topo)["eu-2"].health == cpb.NODE_HEALTH_UP
    # Links stay while a node is down: its peers keep retrying it.
    assert links_of(topo)[("eu-2", "eu-1")] == ["catalog", "eu_users"]
    assert await coord.check_health_now() == []

    assert await heartbeat(stub, "eu-1") == revision + 2
    assert nodes_by_id(await topology(stub))["eu-1"].health == cpb.NODE_HEALTH_UP


async def test_registration_marks_a_down_node_up(stub, coord, clock):
    revision = await register(stub, "jp-1", "ap-northeast-1")
    clock.advance(EXPIRY_S * 2)
    assert await coord.check_health_now() == ["jp-1"]
    assert await register(stub, "jp-1", "ap-northeast-1") == revision + 2
    assert nodes_by_id(await topology(stub))["jp-1"].health == cpb.NODE_HEALTH_UP


async def test_background_health_task_marks_silent_nodes_down(harness, stub, clock):
    await register(stub, "us-1", "us-east-1")
    call = stub.WatchTopology(cpb.WatchTopologyRequest(after_revision=0))
    first = await next_message(call)
    assert nodes_by_id(first.topology)["us-1"].health == cpb.NODE_HEALTH_UP
    clock.advance(EXPIRY_S * 2)
    # No check_health_now here: the daemon's own periodic pass must notice.
    second = await next_message(call)
    assert second.topology.revision == first.topology.revision + 1
    assert nodes_by_id(second.topology)["us-1"].health == cpb.NODE_HEALTH_DOWN
    call.cancel()


# --- watch ---------------------------------------------------------------------------------------


async def test_watch_sends_current_then_every_new_revision(stub):
    call = stub.WatchTopology(cpb.WatchTopologyRequest(after_revision=0))
    first = await next_message(call)
    current = (await topology(stub)).revision
    assert first.topology.revision == current
    assert list(first.topology.nodes) == []
    seen = [current]
    for i, region in enumerate(["us-east-1", "eu-west-1", "ap-northeast-1"]):
        revision = await register(stub, f"n-{i}", region)
        message = await next_message(call)
        assert message.topology.revision == revision
        assert f"n-{i}" in nodes_by_id(message.topology)
        seen.append(message.topology.revision)
    assert seen == sorted(set(seen))
    call.cancel()


async def test_watch_resumes_after_revision(stub):
    resume_from = await register(stub, "eu-1", "eu-west-1")
    call = stub.WatchTopology(cpb.WatchTopologyRequest(after_revision=resume_from))
    revision = await register(stub, "eu-2", "eu-central-1")
    # Had the current revision been sent although it is not after resume_from, it would come
    # first here.
    message = await next_message(call)
    assert message.topology.revision == revision > resume_from
    call.cancel()

    older = stub.WatchTopology(cpb.WatchTopologyRequest(after_revision=resume_from - 1))
    assert (await next_message(older)).topology.revision == revision
    older.cancel()


async def test_watch_after_a_revision_from_the_future_moves_the_revision_past_it(stub):
    # A node is ahead only when the coordinator lost its state; it must still get a topology
    # newer than the one it holds.
    current = (await topology(stub)).revision
    call = stub.WatchTopology(cpb.WatchTopologyRequest(after_revision=current + 10))
    assert (await next_message(call)).topology.revision == current + 11
    assert (await topology(stub)).revision == current + 11
    call.cancel()


async def test_heartbeat_with_a_revision_from_the_future_moves_the_revision_past_it(stub):
    revision = await register(stub, "eu-1", "eu-west-1")
    response = await stub.Heartbeat(
        cpb.HeartbeatRequest(node_id="eu-1", topology_revision=revision + 5), timeout=RPC_TIMEOUT_S
    )
    assert response.topology_revision == revision + 6
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Heartbeat(
            cpb.HeartbeatRequest(node_id="eu-1", topology_revision=2**63), timeout=RPC_TIMEOUT_S
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "beyond any this coordinator issues" in err.value.details()
    assert (await topology(stub)).revision == revision + 6


async def test_watch_streams_end_cleanly_at_shutdown(harness, coord, stub):
    call = stub.WatchTopology(cpb.WatchTopologyRequest())
    await next_message(call)
    await coord.stop()
    assert await next_message(call) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_watchers_over_the_limit_are_refused(harness):
    coord = await harness.start(limits=CoordinatorLimits(watchers_max=1))
    stub = harness.stub(coord)
    first = stub.WatchTopology(cpb.WatchTopologyRequest())
    await next_message(first)
    second = stub.WatchTopology(cpb.WatchTopologyRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await next_message(second)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in err.value.details()
    first.cancel()


def make_topology(revision: int) -> Topology:
    return Topology(revision=revision, cluster=ClusterSpec(), nodes=(), links=())


async def test_slow_watcher_skips_to_the_latest_revision():
    hub = WatchHub(watchers_max=4)
    watcher = hub.subscribe()
    for revision in range(1, 50):
        hub.publish(make_topology(revision))
    latest = await watcher.next()
    assert latest is not None and latest.revision == 49
    hub.publish(make_topology(50))
    hub.close()
    # Shutdown replaces what is pending: the watcher resumes from its last revision later.
    assert await watcher.next() is None


# --- restart -------------------------------------------------------------------------------------


async def test_restart_keeps_nodes_health_and_revision(harness, clock):
    first = await harness.start()
    stub = harness.stub(first)
    await register(stub, "eu-1", "eu-west-1", "10.0.0.1:7401")
    await register(stub, "jp-1", "ap-northeast-1", "10.0.0.2:7401")
    clock.advance(EXPIRY_S * 0.6)
    await heartbeat(stub, "jp-1")
    clock.advance(EXPIRY_S * 0.6)
    assert await first.check_health_now() == ["eu-1"]
    before = await topology(stub)
    await first.stop()

    second = await harness.start()
    stub = harness.stub(second)
    after = await topology(stub)
    assert after.revision == before.revision
    assert nodes_by_id(after) == nodes_by_id(before)
    assert links_of(after) == links_of(before)
    # A restart gives every node a fresh grace period before it can be marked down.
    assert await second.check_health_now() == []
    assert await register(stub, "eu-2", "eu-central-1") == before.revision + 1
    await second.stop()

    third = await harness.start()
    stub = harness.stub(third)
    assert (await topology(stub)).revision == before.revision + 1
    assert set(nodes_by_id(await topology(stub))) == {"eu-1", "eu-2", "jp-1"}


async def test_restart_with_changed_cluster_config_bumps_revision(harness, cluster_path):
    first = await harness.start()
    before = (await topology(harness.stub(first))).revision
    await first.stop()
    cluster_path.write_text(CLUSTER_YAML.replace("scope-test-1", "scope-test-2"))
    second = await harness.start()
    after = await topology(harness.stub(second))
    assert after.revision == before + 1
    assert after.policy_version == "scope-test-2"


async def test_a_data_dir_serves_one_coordinator_at_a_time(harness, coord):
    with pytest.raises(FailedPrecondition, match="in use by another coordinator"):
        await harness.start()
    assert coord.address


# --- bad input -----------------------------------------------------------------------------------


BAD_REGISTRATIONS = [
    (("", "eu-west-1", "h:1", ""), grpc.StatusCode.INVALID_ARGUMENT, "invalid node id"),
    (("Node_1", "eu-west-1", "h:1", ""), grpc.StatusCode.INVALID_ARGUMENT, "lower-case"),
    (("n" * 64, "eu-west-1", "h:1", ""), grpc.StatusCode.INVALID_ARGUMENT, "1 to 63"),
    (("n-1", "mars-1", "h:1", ""), grpc.StatusCode.NOT_FOUND, "configured regions: us-east-1"),
    (("n-1", "", "h:1", ""), grpc.StatusCode.NOT_FOUND, "unknown region"),
    (("n-1", "eu-west-1", "", ""), grpc.StatusCode.INVALID_ARGUMENT, "is not HOST:PORT"),
    (("n-1", "eu-west-1", "host", ""), grpc.StatusCode.INVALID_ARGUMENT, "is not HOST:PORT"),
    (("n-1", "eu-west-1", "host:", ""), grpc.StatusCode.INVALID_ARGUMENT, "is not HOST:PORT"),
    (("n-1", "eu-west-1", ":7401", ""), grpc.StatusCode.INVALID_ARGUMENT, "is not HOST:PORT"),
    (("n-1", "eu-west-1", "host:0", ""), grpc.StatusCode.INVALID_ARGUMENT, "port 0"),
    (("n-1", "eu-west-1", "host:70000", ""), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    (("n-1", "eu-west-1", "ho st:7401", ""), grpc.StatusCode.INVALID_ARGUMENT, "letters, digits"),
    (("n-1", "eu-west-1", "::1:7401", ""), grpc.StatusCode.INVALID_ARGUMENT, "brackets"),
    (("n-1", "eu-west-1", "[zz]:7401", ""), grpc.StatusCode.INVALID_ARGUMENT, "IPv6"),
    (("n-1", "eu-west-1", "h" * 300 + ":1", ""), grpc.StatusCode.INVALID_ARGUMENT, "the limit is 255"),
    (("n-1", "eu-west-1", "h:1", "metrics"), grpc.StatusCode.INVALID_ARGUMENT, "metrics address"),
]


@pytest.mark.parametrize(("fields", "code", "text"), BAD_REGISTRATIONS)
async def test_bad_registration_is_refused_and_changes_nothing(stub, fields, code, text):
    await register(stub, "ok-1", "us-east-1")
    before = await topology(stub)
    node_id, region, address, metrics = fields
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterNode(
            cpb.RegisterNodeRequest(node_id=node_id, region=region, address=address, metrics_address=metrics),
            timeout=RPC_TIMEOUT_S,
        )
    assert err.value.code() == code
    assert text in err.value.details()
    assert await topology(stub) == before


async def test_ipv6_and_hostname_addresses_are_accepted(stub):
    await register(stub, "v6-1", "us-east-1", "[::1]:7401", "[fd00::5]:9401")
    await register(stub, "dns-1", "us-east-1", "node-1.us-east-1.internal:7401")
    nodes = nodes_by_id(await topology(stub))
    assert nodes["v6-1"].address == "[::1]:7401"
    assert nodes["dns-1"].address == "node-1.us-east-1.internal:7401"


async def test_a_node_cannot_change_region(stub):
    await register(stub, "eu-1", "eu-west-1")
    before = await topology(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, "eu-1", "us-east-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot move" in err.value.details() and "new node id" in err.value.details()
    assert await topology(stub) == before


async def test_heartbeat_bad_and_unknown_node(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await heartbeat(stub, "Bad Id")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid node id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await heartbeat(stub, "ghost-1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register first" in err.value.details()


async def test_node_limit(harness):
    coord = await harness.start(limits=CoordinatorLimits(nodes_max=2))
    stub = harness.stub(coord)
    await register(stub, "a-1", "us-east-1")
    await register(stub, "a-2", "us-east-1")
    await register(stub, "a-2", "us-east-1", "10.9.9.9:1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, "a-3", "us-east-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the limit" in err.value.details()


async def test_oversized_request_is_refused(harness):
    coord = await harness.start(limits=CoordinatorLimits(request_bytes_max=1024))
    stub = harness.stub(coord)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(stub, "big-1", "us-east-1", "h" * 2000 + ":1")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- health, reflection, metrics ----------------------------------------------------------------


async def test_health_service_answers(harness, coord):
    health = health_pb2_grpc.HealthStub(harness.channel(coord))
    for service in ("", "domicile.v1.CoordinatorService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_service(harness, coord):
    reflection = reflection_pb2_grpc.ServerReflectionStub(harness.channel(coord))
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="domicile.v1.CoordinatorService"),
    ]
    responses = [r async for r in reflection.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT_S)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"domicile.v1.CoordinatorService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as response:
        return str(response.read().decode())


async def test_metrics_endpoint(harness):
    coord = await harness.start(metrics_port=free_port())
    stub = harness.stub(coord)
    revision = await register(stub, "eu-1", "eu-west-1")
    await heartbeat(stub, "eu-1")
    call = stub.WatchTopology(cpb.WatchTopologyRequest())
    await next_message(call)
    url = f"http://{coord.metrics_address}/metrics"
    text = await asyncio.to_thread(fetch, url)
    assert f"domicile_coordinator_topology_revision {float(revision)}" in text
    assert 'domicile_coordinator_nodes{health="up"} 1.0' in text
    assert 'domicile_coordinator_nodes{health="down"} 0.0' in text
    assert "domicile_coordinator_watchers 1.0" in text
    assert 'domicile_coordinator_rpc_duration_seconds_count{code="OK",method="RegisterNode"} 1.0' in text
    assert 'domicile_coordinator_rpc_duration_seconds_count{code="OK",method="Heartbeat"} 1.0' in text
    call.cancel()
    await coord.stop()
    with pytest.raises(OSError):
        await asyncio.to_thread(fetch, url)


async def test_two_coordinators_in_one_process_have_separate_metrics(harness, tmp_path):
    a = await harness.start(data_dir=tmp_path / "a")
    b = await harness.start(data_dir=tmp_path / "b")
    await register(harness.stub(a), "eu-1", "eu-west-1")
    assert a.metrics.registry is not b.metrics.registry
    assert a.metrics.registry.get_sample_value("domicile_coordinator_nodes", {"health": "up"}) == 1
    assert b.metrics.registry.get_sample_value("domicile_coordinator_nodes", {"health": "up"}) == 0


# --- configuration and the command line ----------------------------------------------------------


async def test_heartbeat_settings_from_config_override_cluster(harness):
    coord = await harness.start(heartbeat_interval_ms=250, missed_heartbeats_max=5)
    response = await harness.stub(coord).RegisterNode(
        cpb.RegisterNodeRequest(node_id="x-1", region="us-east-1", address="h:1"), timeout=RPC_TIMEOUT_S
    )
    assert response.heartbeat_interval_ms == 250
    assert coord.missed_heartbeats_max == 5


def test_bad_settings_are_refused_with_what_is_allowed(tmp_path, cluster_path):
    base = CoordinatorConfig(cluster_config=cluster_path, data_dir=tmp_path / "d", insecure=True)
    cases = [
        (replace(base, listen="nowhere"), "is not HOST:PORT"),
        (replace(base, metrics_port=70000), "0 (disabled) to 65535"),
        (replace(base, heartbeat_interval_ms=1), "10 to 600000 ms"),
        (replace(base, missed_heartbeats_max=0), "1 to 1000"),
        (replace(base, log_level="LOUD"), "allowed: DEBUG"),
        (replace(base, cluster_config=tmp_path / "missing.yaml"), "does not exist"),
    ]
    for config, text in cases:
        with pytest.raises(InvalidArgument, match=re.escape(text)):
            Coordinator(config)


def test_config_file_and_flags(tmp_path, cluster_path):
    config_file = tmp_path / "etc" / "coordinator.yaml"
    config_file.parent.mkdir()
    config_file.write_text(
        f"listen: 0.0.0.0:7500\nmetrics-port: 9500\ncluster_config: {cluster_path}\ndata_dir: state\n"
        "heartbeat_interval_ms: 300\ninsecure: true\n"
    )
    config = config_from_args(["--config", str(config_file), "--metrics-port", "0", "--log-level", "debug"])
    assert config.listen == "0.0.0.0:7500"
    assert config.metrics_port == 0
    assert config.cluster_config == cluster_path
    assert config.data_dir == config_file.parent / "state"
    assert config.heartbeat_interval_ms == 300
    assert config.missed_heartbeats_max is None
    assert config.log_level == "debug"

    defaults = config_from_args(["--cluster-config", str(cluster_path), "--insecure"])
    assert (defaults.listen, defaults.metrics_port) == ("127.0.0.1:7400", 9400)
    assert defaults.data_dir == Path(".domicile/coordinator")

    with pytest.raises(InvalidArgument, match="--cluster-config is required"):
        config_from_args([])
    # Secure by default: no TLS files and no --insecure is a refusal that says what to pass.
    with pytest.raises(InvalidArgument, match="no TLS files for the coordinator: pass --tls-dir DIR"):
        config_from_args(["--cluster-config", str(cluster_path)])
    with pytest.raises(InvalidArgument, match="--insecure and TLS files exclude each other"):
        config_from_args(["--cluster-config", str(cluster_path), "--insecure", "--tls-dir", str(tmp_path)])
    with pytest.raises(InvalidArgument, match="--ca given without --cert, --key"):
        config_from_args(["--cluster-config", str(cluster_path), "--ca", str(tmp_path / "ca.crt")])
    config_file.write_text("listen: 0.0.0.0:7500\nport: 1\n")
    with pytest.raises(InvalidArgument, match="unknown key 'port'; allowed: listen"):
        config_from_args(["--config", str(config_file)])
    config_file.write_text("metrics_port: lots\n")
    with pytest.raises(InvalidArgument, match="must be an integer"):
        config_from_args(["--config", str(config_file)])


def test_python_m_coordinator_prints_address_and_stops_on_sigterm(tmp_path, cluster_path):
    metrics_port = free_port()
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--metrics-port",
            str(metrics_port),
            "--cluster-config",
            str(cluster_path),
            "--data-dir",
            str(tmp_path / "cli-data"),
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("coordinator listening on 127.0.0.1:"), line
        assert line.endswith(f" metrics http://127.0.0.1:{metrics_port}/metrics"), line
        assert "domicile_coordinator_topology_revision 1.0" in fetch(
            f"http://127.0.0.1:{metrics_port}/metrics"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        logged = proc.stderr.read()
        assert "coordinator stopped" in logged
        # Plaintext is never silent: every start with --insecure says so at WARNING.
        assert "WARNING domicile.identity: the coordinator runs with --insecure: plaintext gRPC" in logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_m_coordinator_reports_bad_config(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--cluster-config",
            str(tmp_path / "nope.yaml"),
            "--metrics-port",
            "0",
            "--insecure",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr


async def test_node_health_enum_matches_the_wire():
    assert NodeHealth.UP == cpb.NODE_HEALTH_UP
    assert NodeHealth.DOWN == cpb.NODE_HEALTH_DOWN
