"""Synchronous durability: in a namespace with min_regions_acked 2, a Put is acknowledged only
once a second in-scope region holds it durably."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.causality import Dot
from domicile.cluster import parse_cluster
from domicile.errors import InvalidArgument
from domicile.model import Limits
from domicile.v1 import storage_node_pb2 as spb
from node.service import SYNC_WAIT_SHARE
from tests.support.cluster import LocalCluster, eventually

EU = ["eu-west-1", "eu-central-1"]
NAMESPACES = [
    {"name": "sync_eu", "regions": EU, "min_regions_acked": 2},
    {"name": "async_eu", "regions": EU},
]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, EU, proxies=True, namespaces=NAMESPACES)
    # A short request deadline, so that a write the other region cannot acknowledge fails fast.
    cluster.node_overrides["limits"] = Limits(request_deadline_default_s=2.0)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def waits(cluster: LocalCluster, namespace: str) -> tuple[float, float]:
    """(count, sum in seconds) of eu-west-1's domicile_sync_ack_wait_seconds for `namespace`."""
    registry = cluster.nodes["eu-west-1"].metrics.registry
    labels = {"namespace": namespace}
    count = registry.get_sample_value("domicile_sync_ack_wait_seconds_count", labels)
    total = registry.get_sample_value("domicile_sync_ack_wait_seconds_sum", labels)
    return count or 0.0, total or 0.0


async def test_an_acknowledged_write_is_already_held_by_the_second_region(pair: LocalCluster) -> None:
    for i in range(5):
        await pair.put("eu-west-1", "sync_eu", f"k{i}", b"v")
        # No waiting: the answer came after eu-central-1 committed it.
        assert pair.nodes["eu-central-1"].engine.get("sync_eu", f"k{i}") is not None
    # Each write's wait for the second region is observed; an asynchronous namespace's are not.
    await pair.put("eu-west-1", "async_eu", "k", b"v")
    assert waits(pair, "sync_eu")[0] == 5
    assert waits(pair, "async_eu") == (0.0, 0.0)


async def test_a_write_the_second_region_cannot_acknowledge_fails_unavailable_then_a_retry_succeeds(
    pair: LocalCluster,
) -> None:
    for proxy in pair.proxies.values():
        proxy.partition()
    request = spb.PutRequest(namespace="sync_eu", key="cut", value=b"v", request_id="sync-cut-1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pair.stub("eu-west-1").Put(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "needs 2 regions" in (refused.value.details() or "")
    # The wait that timed out is observed too, at its full length.
    count, total = waits(pair, "sync_eu")
    assert count == 1 and total >= 2.0 * SYNC_WAIT_SHARE
    assert pair.nodes["eu-central-1"].engine.get("sync_eu", "cut") is None
    # An asynchronous namespace is not held back by the partition.
    await pair.put("eu-west-1", "async_eu", "cut", b"v")
    for proxy in pair.proxies.values():
        proxy.heal()
    # The retry is made once eu-central-1 is back: its link from eu-west-1 has reconnected.
    link = pair.nodes["eu-west-1"].replication.senders["eu-central-1"]

    async def relinked() -> bool:
        return link.connected

    await eventually(relinked, 15.0, "the link to eu-central-1 reconnected")
    retry = await pair.stub("eu-west-1").Put(request, timeout=10)
    assert pair.nodes["eu-central-1"].engine.get("sync_eu", "cut") is not None
    state = pair.nodes["eu-west-1"].engine.get("sync_eu", "cut")
    assert state is not None
    assert [v.dot for v in state.versions] == [Dot(retry.version.dot.node_id, retry.version.dot.counter)]


def test_min_regions_acked_is_validated_against_the_scope() -> None:
    base = {"regions": [{"name": r} for r in EU]}
    spec = parse_cluster({**base, "namespaces": [{"name": "n", "regions": EU, "min_regions_acked": 2}]})
    assert spec.namespace("n").min_regions_acked == 2
    expected = r"namespaces\[0\] \(n\): min_regions_acked must be .* from 1 to 2"
    with pytest.raises(InvalidArgument, match=expected):
        parse_cluster({**base, "namespaces": [{"name": "n", "regions": EU, "min_regions_acked": 3}]})
