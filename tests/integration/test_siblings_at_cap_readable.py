"""Regression: A key the write path accepted cannot be read back: sixteen siblings (the default siblings_max)
of a value at the value limit (1 MiB) weigh, as node/service.py answer_bytes counts them, a few
KiB more than read_record_bytes_max (16 MiB), so Get refuses the key with FAILED_PRECONDITION
and Scan cannot get past it. The refusal tells the client to resolve the siblings, but the
sibling cap's own message says to "read the key and write ... with its context_token", which
is impossible: the only way out is a blind Delete that loses every sibling unread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.identity.principal import ExpectedPeer
from domicile.model import Limits
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.limits import CLIENT_CHANNEL_OPTIONS
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "notes_eu"  # siblings, default siblings_max (16)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION], namespaces=[{"name": NS, "regions": [REGION]}])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_every_state_the_sibling_cap_allows_can_be_read(cluster: LocalCluster) -> None:
    limits = Limits()
    channel = cluster.dialer.channel(
        f"127.0.0.1:{cluster.ports[REGION]}", ExpectedPeer.node(REGION, REGION), CLIENT_CHANNEL_OPTIONS
    )
    try:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        spec = cluster.nodes[REGION].view.topology.cluster.namespace(NS)
        accepted = 0
        for i in range(spec.siblings_max):
            value = bytes([65 + i]) * limits.value_bytes_max
            # Blind writes (no context_token): each one is a sibling, all accepted up to the cap
            # (a node that refused the one that makes the key unreadable would also be right).
            try:
                await stub.Put(spb.PutRequest(namespace=NS, key="k", value=value), timeout=30)
            except grpc.aio.AioRpcError as refused:
                assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
                break
            accepted += 1
        try:
            got = await stub.Get(spb.GetRequest(namespace=NS, key="k"), timeout=30)
        except grpc.aio.AioRpcError as error:
            pytest.fail(
                f"a key holding {accepted} accepted siblings of {limits.value_bytes_max} bytes "
                f"cannot be read: {error.code().name}: {error.details()}"
            )
        assert len(got.versions) == accepted
    finally:
        await channel.close()
