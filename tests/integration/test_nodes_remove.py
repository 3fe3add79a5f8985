"""`domicile nodes remove`: a node that is down is decommissioned only after the remaining
replicas have exchanged what they hold (a write the dead node shipped to one replica only then
reaches the others), and its links drop; a node that is up is refused, and nothing changes."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import grpc
import pytest

from domicile.cli.main import main
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.topology import NodeHealth
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster, eventually

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1"]
KEY = "XS0000000042"


async def cli(argv: list[str]) -> tuple[int, str]:
    """Runs the `domicile` command in a thread (it runs an event loop of its own)."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return main(argv)

    code = await asyncio.to_thread(run)
    return code, out.getvalue()


async def test_a_dead_node_is_removed_after_its_unique_writes_are_recovered(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, REGIONS, proxies=True)
    # No rounds of their own (nor the relay): only the removal's recovery can move the write.
    cluster.node_overrides["antientropy_interval_s"] = 0
    await cluster.start_linked()
    try:
        command = ["nodes", "remove", "us-east-1", "--coordinator", cluster.coordinator_address]
        command += cluster.cli_args()
        code, out = await cli(command)
        assert code == 2 and "us-east-1 is up; stop it first" in out, out

        # Streams into eu-central-1 are cut: us-east-1's write reaches eu-west-1 only.
        cluster.proxies["eu-central-1"].partition()
        await cluster.put("us-east-1", "instruments", KEY, b"shipped to one replica")

        async def at_west() -> bool:
            return bool(await cluster.values("eu-west-1", "instruments", KEY))

        await eventually(at_west, 10, "the write at eu-west-1")
        await cluster.stop_node("us-east-1")
        cluster.proxies["eu-central-1"].heal()
        assert cluster.coordinator is not None
        registry = cluster.coordinator.registry

        async def down() -> bool:
            node = registry.topology().node("us-east-1")
            return node is not None and node.health is NodeHealth.DOWN

        await eventually(down, 10, "us-east-1 marked down")
        assert await cluster.values("eu-central-1", "instruments", KEY) == set()

        code, out = await cli(command)
        assert code == 0, out
        assert "recovery pass 1: 2 rounds, 1 keys repaired" in out, out
        assert "node us-east-1 (us-east-1) removed at topology revision" in out, out
        assert await cluster.values("eu-central-1", "instruments", KEY) == {b"shipped to one replica"}
        topology = registry.topology()
        assert topology.node("us-east-1") is None
        assert all("us-east-1" not in (link.source_node_id, link.target_node_id) for link in topology.links)

        async def links_dropped() -> bool:
            for region in ("eu-west-1", "eu-central-1"):
                status = await cluster.stub(region).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
                if any(link.target_node_id == "us-east-1" for link in status.outbound):
                    return False
            return True

        await eventually(links_dropped, 10, "the links to us-east-1 dropped")
    finally:
        await cluster.stop()


async def test_only_an_operator_may_have_a_node_repair_from_a_peer(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        assert cluster.pki is not None
        node = cluster.nodes["eu-west-1"]
        request = spb.CheckConsistencyRequest(peer_node_id="eu-central-1", repair=True)
        auditor = Dialer.mutual_tls(cluster.pki.client("watcher", (Role.AUDITOR,)))
        async with auditor.channel(node.address, ExpectedPeer.node("eu-west-1", "eu-west-1")) as channel:
            stub = spb_grpc.StorageNodeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckConsistency(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "repair needs the operator role" in (refused.value.details() or "")
            # Comparing stays open to an auditor.
            compared = await stub.CheckConsistency(
                spb.CheckConsistencyRequest(peer_node_id="eu-central-1"), timeout=10
            )
            assert compared.peer_node_id == "eu-central-1"
        operator = Dialer.mutual_tls(cluster.pki.client("ops", (Role.OPERATOR,)))
        async with operator.channel(node.address, ExpectedPeer.node("eu-west-1", "eu-west-1")) as channel:
            repaired = await spb_grpc.StorageNodeServiceStub(channel).CheckConsistency(request, timeout=10)
            assert all(n.keys_repaired == 0 for n in repaired.namespaces)
    finally:
        await cluster.stop()
