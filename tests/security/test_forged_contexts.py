"""A causal context cannot name this node's own counters beyond what it issued for the key:
such a context is forged, and used to brick the key (every later write failed)."""

from __future__ import annotations

import grpc
import pytest

from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster

NEAR_LIMIT = (1 << 62) - 2


async def test_finding_forged_own_counter_context_does_not_brick_the_key(pair: LocalCluster) -> None:
    """Regression: a Put whose context named this node at 2^62-2 was accepted, and from then on
    every write to the key failed with INVALID_ARGUMENT."""
    stub = pair.stub("eu-west-1")
    node = pair.nodes["eu-west-1"]
    await pair.put("eu-west-1", "customers_eu", "victim", b"v1")
    before = (node.engine.get("customers_eu", "victim"), node.engine.last_lsn())
    forged = pb.CausalContext(version_vector={"eu-west-1": NEAR_LIMIT})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Put(
            spb.PutRequest(namespace="customers_eu", key="victim", value=b"x", context=forged), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert f"names counter {NEAR_LIMIT}" in details and "issued only up to 1" in details, details
    assert (node.engine.get("customers_eu", "victim"), node.engine.last_lsn()) == before
    # Both kinds of write still work: read-modify-write with the context a Get returns...
    got = await pair.get("eu-west-1", "customers_eu", "victim")
    await stub.Put(
        spb.PutRequest(namespace="customers_eu", key="victim", value=b"v2", context=got.context), timeout=5
    )
    assert await pair.values("eu-west-1", "customers_eu", "victim") == {b"v2"}
    # ... and a blind write.
    await stub.Put(spb.PutRequest(namespace="customers_eu", key="victim", value=b"v3"), timeout=5)
    assert await pair.values("eu-west-1", "customers_eu", "victim") == {b"v2", b"v3"}


async def test_a_forged_own_counter_context_on_a_new_key_or_a_delete_is_refused(pair: LocalCluster) -> None:
    stub = pair.stub("eu-west-1")
    node = pair.nodes["eu-west-1"]
    before = (node.engine.last_lsn(), node.engine.counts())
    forged = pb.CausalContext(dots=[pb.Dot(node_id="eu-west-1", counter=7)])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Put(
            spb.PutRequest(namespace="customers_eu", key="new", value=b"x", context=forged), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "issued only up to 0" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Delete(spb.DeleteRequest(namespace="customers_eu", key="new", context=forged), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (node.engine.last_lsn(), node.engine.counts()) == before
    assert node.engine.get("customers_eu", "new") is None


async def test_other_nodes_counters_in_a_context_are_accepted(pair: LocalCluster) -> None:
    """This node cannot know another node's counters (their writes may not have arrived yet)."""
    ahead = pb.CausalContext(version_vector={"eu-central-1": 3})
    response = await pair.stub("eu-west-1").Put(
        spb.PutRequest(namespace="customers_eu", key="ahead", value=b"x", context=ahead), timeout=5
    )
    assert response.version.dot.counter == 1
