"""A replication link opens each session's stream on a channel of its own.

Regression: the long compliance property run under faults aborted the process inside gRPC
(`memory_quota.cc`: `request.max() <= MemoryRequest::max_allowed_size()`) as a link opened a
new stream on the channel it had kept across reconnects. gRPC sizes a new call's arena from the
largest arena an earlier call on the same channel used, and asks the memory quota for it in one
request, which may not pass 1 GiB; a fresh channel per session inherits nothing
(node.replication.session_channel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.v1 import storage_node_pb2 as spb
from node.replication.outbound import LinkSender
from tests.support.cluster import LocalCluster, eventually

SOURCE, TARGET = "eu-west-1", "eu-central-1"
NAMESPACES = [{"name": "records", "regions": "global", "classification": "public"}]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [SOURCE, TARGET], namespaces=NAMESPACES, proxies=True)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def sender_of(cluster: LocalCluster) -> LinkSender:
    return cluster.nodes[SOURCE].replication.senders[TARGET]


async def test_a_reconnecting_link_opens_its_stream_on_a_new_channel_and_closes_the_old(
    pair: LocalCluster,
) -> None:
    sender = sender_of(pair)
    first = sender._channels.current
    assert first is not None
    opened = sender._channels.opened

    # Cut the target off: the link's stream breaks and the link reconnects after the heal.
    pair.proxies[TARGET].partition()

    async def broken() -> bool:
        return not sender.connected

    await eventually(broken, 15, "the link noticed the partition")
    pair.proxies[TARGET].heal()
    await pair.wait_linked(15)

    second = sender._channels.current
    assert second is not None and second is not first
    assert sender._channels.opened > opened
    # The earlier session's channel is closed, not left holding a connection.
    assert first.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    assert second.get_state() is not grpc.ChannelConnectivity.SHUTDOWN

    # And the link still carries writes on its new channel.
    put = await pair.stub(SOURCE).Put(spb.PutRequest(namespace="records", key="k", value=b"v"), timeout=10)
    assert put.lsn > 0

    async def replicated() -> bool:
        return sender.acked_lsn >= put.lsn

    await eventually(replicated, 15, "the write replicated over the new channel")
