"""A replication stream is authorised before its hello is read: the peer must be a node with a
link to this one. Only then are the hello's fields checked, and its region must be there and be
the peer certificate's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
LINKED = "eu-central-1"  # prefs_eu and customers_eu link it with eu-west-1
UNLINKED = "us-east-1"  # no namespace of the test cluster links it with eu-west-1


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION, LINKED])
    await cluster.start()
    await cluster.wait_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def first_answer(channel: object, hello: rpb.ReplicationHello | None) -> grpc.aio.AioRpcError:
    assert isinstance(channel, grpc.aio.Channel)
    async with channel:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
        if hello is not None:
            await call.write(rpb.ReplicateRequest(hello=hello))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        return refused.value


async def test_regression_a_stream_is_refused_before_its_hello_is_read(cluster: LocalCluster) -> None:
    """An app that opens a stream and sends nothing is refused at once, not waited on."""
    error = await first_answer(cluster.channel(cluster.nodes[REGION].address), None)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "replication.Replicate" in (error.details() or "")


async def test_regression_an_unlinked_node_learns_nothing_from_its_malformed_hello(
    cluster: LocalCluster,
) -> None:
    malformed = rpb.ReplicationHello(
        source_node_id="NOT A NODE ID!", source_region="??", target_node_id=REGION
    )
    error = await first_answer(cluster.channel_as_node(UNLINKED, cluster.nodes[REGION].address), malformed)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "holds no replication link" in (error.details() or "")
    assert "NOT A NODE ID" not in (error.details() or "")


async def test_regression_a_hello_without_its_region_is_refused(cluster: LocalCluster) -> None:
    no_region = rpb.ReplicationHello(source_node_id=LINKED, target_node_id=REGION)
    error = await first_answer(cluster.channel_as_node(LINKED, cluster.nodes[REGION].address), no_region)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names no source_region" in (error.details() or "")
    other_region = rpb.ReplicationHello(source_node_id=LINKED, source_region=REGION, target_node_id=REGION)
    error = await first_answer(cluster.channel_as_node(LINKED, cluster.nodes[REGION].address), other_region)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"claims region {REGION!r}" in (error.details() or "")
