"""Synchronous durability: in a namespace with min_regions_acked 2, a Put is acknowledged only
once a second in-scope region holds it durably."""

from __future__ import annotations

import asyncio
import dataclasses
import time
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


async def test_put_batch_waits_for_its_records_together_not_in_turn(pair: LocalCluster) -> None:
    """Regression: PutBatch waited for each synchronous record after the one before, each up to
    80% of the deadline, so a batch of three that no other region acknowledged failed as a whole
    with DEADLINE_EXCEEDED (3 x 1.6 s of a 2 s deadline) instead of answering each record
    UNAVAILABLE after one wait, as a Put is answered."""
    for proxy in pair.proxies.values():
        proxy.partition()
    puts = [
        spb.PutRequest(namespace="sync_eu", key=f"b{i}", value=b"v", request_id=f"batch-cut-{i}")
        for i in range(3)
    ] + [spb.PutRequest(namespace="async_eu", key="b", value=b"v")]
    started = time.monotonic()
    response = await pair.stub("eu-west-1").PutBatch(spb.PutBatchRequest(puts=puts), timeout=5)
    took = time.monotonic() - started
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    assert [r.code for r in response.results] == [unavailable] * 3 + [0]
    assert all("needs 2 regions" in r.message for r in response.results[:3])
    # One wait for all three (each observed), not three in a row.
    assert waits(pair, "sync_eu")[0] == 3
    assert took < 3 * 2.0 * SYNC_WAIT_SHARE


async def test_a_link_that_takes_a_namespace_on_later_vouches_only_for_its_later_writes(
    tmp_path: Path,
) -> None:
    """Regression: a write waiting for a second region was answered OK when a topology revision
    added its namespace to a link whose target had already acknowledged past the write. That
    link had passed the write by (it did not carry the namespace then), so only the origin held
    it. An acknowledgement is cumulative: a link vouches for a namespace's entries only from
    when it carried it."""
    three = [*EU, "us-east-1"]
    cluster = LocalCluster(
        tmp_path,
        three,
        proxies=True,
        namespaces=[
            {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
            {"name": "sync_eu", "regions": EU, "min_regions_acked": 2},
        ],
    )
    cluster.node_overrides["limits"] = Limits(request_deadline_default_s=4.0)
    await cluster.start_linked()
    try:
        cluster.proxies["eu-central-1"].partition()
        source = cluster.nodes["eu-west-1"]
        manager = source.replication
        far = manager.senders["us-east-1"]
        assert "sync_eu" not in far.namespaces
        request = spb.PutRequest(namespace="sync_eu", key="k", value=b"v", request_id="late-link-1")
        put = asyncio.ensure_future(cluster.stub("eu-west-1").Put(request))

        async def passed_by() -> bool:
            last = source.engine.last_lsn()
            return last > 0 and far.acked_lsn >= last

        await eventually(passed_by, 5, "us-east-1 acknowledged the position past the write")
        topology = source.view.topology
        links = tuple(
            dataclasses.replace(link, namespaces=(*link.namespaces, "sync_eu"))
            if (link.source_node_id, link.target_node_id) == ("eu-west-1", "us-east-1")
            else link
            for link in topology.links
        )
        manager.apply(dataclasses.replace(topology, links=links, revision=topology.revision + 1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await put
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.nodes["us-east-1"].engine.get("sync_eu", "k") is None
        # Negative control: an entry written after the change counts for the link once acknowledged.
        before = source.engine.last_lsn()
        later = await cluster.put("eu-west-1", "instruments", "after", b"v")
        assert later.lsn > before

        async def acknowledged() -> bool:
            return far.acked_lsn >= later.lsn

        await eventually(acknowledged, 5, "us-east-1 acknowledged the later entry")
        assert "us-east-1" in manager.regions_holding("sync_eu", later.lsn)
        assert "us-east-1" not in manager.regions_holding("sync_eu", before)
    finally:
        await cluster.stop()


def test_min_regions_acked_is_validated_against_the_scope() -> None:
    base = {"regions": [{"name": r} for r in EU]}
    spec = parse_cluster({**base, "namespaces": [{"name": "n", "regions": EU, "min_regions_acked": 2}]})
    assert spec.namespace("n").min_regions_acked == 2
    expected = r"namespaces\[0\] \(n\): min_regions_acked must be .* from 1 to 2"
    with pytest.raises(InvalidArgument, match=expected):
        parse_cluster({**base, "namespaces": [{"name": "n", "regions": EU, "min_regions_acked": 3}]})
