"""A node given a topology from a newer coordinator, with enum values this version does not
know, adopts it, keeps serving, and resumes on it after a restart (it is cached)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from domicile.model import Classification, ConflictMode
from domicile.topology import NodeHealth
from domicile.wire.topology import topology_from_pb, topology_to_pb
from tests.support.cluster import LocalCluster, eventually

FUTURE = 99
REGIONS = ["eu-west-1", "eu-central-1"]


async def test_a_node_adopts_unknown_enum_values_and_keeps_serving(tmp_path: Path):
    cluster = LocalCluster(tmp_path, REGIONS)
    await cluster.start()
    try:
        await cluster.wait_linked()
        # The nodes keep working on their last topology without the coordinator. With it, the
        # node's report of the injected revision would move the coordinator past it, to a
        # revision with the coordinator's own, known, values, at any moment of the test.
        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        msg = topology_to_pb(node.view.topology)
        msg.revision += 100
        for ns in msg.namespaces:
            if ns.name == "customers_eu":
                ns.conflict_mode = FUTURE  # type: ignore[assignment]
                ns.classification = FUTURE  # type: ignore[assignment]
        for n in msg.nodes:
            n.health = FUTURE  # type: ignore[assignment]
        # The path a WatchTopology message takes: decode, then adopt.
        await node.link.on_topology(topology_from_pb(msg), msg.SerializeToString())
        assert node.view.revision == msg.revision
        spec = node.view.topology.cluster.namespace("customers_eu")
        assert spec.conflict_mode is ConflictMode.UNSPECIFIED
        assert spec.classification is Classification.UNSPECIFIED
        assert all(n.health is NodeHealth.UNSPECIFIED for n in node.view.topology.nodes)

        # Two writes without a context stay two siblings, as in the default mode.
        facts = {"subject_id": "c-1", "subject_jurisdiction": "DE"}
        await cluster.put("eu-west-1", "customers_eu", "c-1", b"a", **facts)
        await cluster.put("eu-west-1", "customers_eu", "c-1", b"b", **facts)
        assert await cluster.values("eu-west-1", "customers_eu", "c-1") == {b"a", b"b"}

        # Regression: the unknown classification ranked below public, so a write could claim to be
        # looser than the namespace. It is judged as personal, and nothing looser is accepted.
        for looser in (Classification.PUBLIC, Classification.INTERNAL, Classification.CONFIDENTIAL):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await cluster.put(
                    "eu-west-1", "customers_eu", "c-2", b"x", classification=int(looser), **facts
                )
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "judged as personal" in (refused.value.details() or "")
        assert await cluster.values("eu-west-1", "customers_eu", "c-2") == set()
        stricter = int(Classification.FINANCIAL)
        await cluster.put("eu-west-1", "customers_eu", "c-2", b"x", classification=stricter, **facts)
        assert await cluster.values("eu-west-1", "customers_eu", "c-2") == {b"x"}

        # Replication still runs on the links of the adopted topology.
        async def replicated() -> bool:
            return await cluster.values("eu-central-1", "customers_eu", "c-1") == {b"a", b"b"}

        await eventually(replicated, 10.0, "both siblings at eu-central-1")

        await cluster.stop_node("eu-west-1")
        restarted = await cluster.start_node("eu-west-1")
        assert restarted.view.revision == msg.revision
        assert restarted.view.topology.cluster.namespace("customers_eu").classification is (
            Classification.UNSPECIFIED
        )
        assert await cluster.values("eu-west-1", "customers_eu", "c-1") == {b"a", b"b"}
    finally:
        await cluster.stop()
