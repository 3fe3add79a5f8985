"""A causal context cannot name this node's own counters beyond what it issued for the key:
such a context is forged, and used to brick the key (every later write failed). Nor can a client
send a plain context at all: nothing authenticates it, and one naming another node's counters
split the key between the nodes for good."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from domicile.model import Limits
from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.records import context_from_pb
from tests.support.cluster import LocalCluster, eventually

NEAR_LIMIT = (1 << 62) - 2
COUNTER_MAX = (1 << 62) - 1


def signed(cluster: LocalCluster, region: str, namespace: str, key: str, context: pb.CausalContext) -> bytes:
    """The context in a token signed with the cluster key, as only the cluster itself can make."""
    return cluster.nodes[region].service.tokens.issue(namespace, key, context_from_pb(context, Limits()))


async def test_finding_forged_own_counter_context_does_not_brick_the_key(pair: LocalCluster) -> None:
    """Regression: a Put whose context named this node at 2^62-2 was accepted, and from then on
    every write to the key failed with INVALID_ARGUMENT. The context comes in a validly signed
    token here, so the engine's own check is what refuses it."""
    stub = pair.stub("eu-west-1")
    node = pair.nodes["eu-west-1"]
    await pair.put("eu-west-1", "customers_eu", "victim", b"v1")
    before = (node.engine.get("customers_eu", "victim"), node.engine.last_lsn())
    forged = signed(
        pair,
        "eu-west-1",
        "customers_eu",
        "victim",
        pb.CausalContext(version_vector={"eu-west-1": NEAR_LIMIT}),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Put(
            spb.PutRequest(namespace="customers_eu", key="victim", value=b"x", context_token=forged),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert f"names counter {NEAR_LIMIT}" in details and "issued only up to 1" in details, details
    assert (node.engine.get("customers_eu", "victim"), node.engine.last_lsn()) == before
    # Both kinds of write still work: read-modify-write with the context token a Get returns...
    got = await pair.get("eu-west-1", "customers_eu", "victim")
    await stub.Put(
        spb.PutRequest(namespace="customers_eu", key="victim", value=b"v2", context_token=got.context_token),
        timeout=5,
    )
    assert await pair.values("eu-west-1", "customers_eu", "victim") == {b"v2"}
    # ... and a blind write.
    await stub.Put(spb.PutRequest(namespace="customers_eu", key="victim", value=b"v3"), timeout=5)
    assert await pair.values("eu-west-1", "customers_eu", "victim") == {b"v2", b"v3"}


async def test_a_forged_own_counter_context_on_a_new_key_or_a_delete_is_refused(pair: LocalCluster) -> None:
    stub = pair.stub("eu-west-1")
    node = pair.nodes["eu-west-1"]
    before = (node.engine.last_lsn(), node.engine.counts())
    forged = signed(
        pair,
        "eu-west-1",
        "customers_eu",
        "new",
        pb.CausalContext(dots=[pb.Dot(node_id="eu-west-1", counter=7)]),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Put(
            spb.PutRequest(namespace="customers_eu", key="new", value=b"x", context_token=forged), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "issued only up to 0" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Delete(
            spb.DeleteRequest(namespace="customers_eu", key="new", context_token=forged), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "issued only up to 0" in (info.value.details() or "")
    assert (node.engine.last_lsn(), node.engine.counts()) == before
    assert node.engine.get("customers_eu", "new") is None


async def test_other_nodes_counters_in_a_signed_context_are_accepted(pair: LocalCluster) -> None:
    """This node cannot know another node's counters (their writes may not have arrived yet), so
    a context the cluster signed may name them beyond what this node has seen."""
    ahead = signed(
        pair, "eu-central-1", "customers_eu", "ahead", pb.CausalContext(version_vector={"eu-central-1": 3})
    )
    response = await pair.stub("eu-west-1").Put(
        spb.PutRequest(namespace="customers_eu", key="ahead", value=b"x", context_token=ahead), timeout=5
    )
    assert response.version.dot.counter == 1


async def test_regression_an_unsigned_context_naming_another_nodes_counter_is_refused(
    tmp_path: Path,
) -> None:
    """Regression: Put(context={vv: {b: 2^62-1}}) sent to node a was accepted (a checks only its
    own counters) and applied by c (each receiver checks only its own); from then on a and c
    dropped b's writes to the key as already covered, and b refused theirs. Now the plain
    context is refused and nothing is written, so b's later write reaches every node."""
    a, b, c = "eu-west-1", "eu-central-1", "us-east-1"
    cluster = LocalCluster(tmp_path, [a, b, c])
    await cluster.start_linked()
    try:
        ns, key = "instruments", "split"
        await cluster.put(a, ns, key, b"first")

        async def everywhere(value: bytes) -> bool:
            return all([await cluster.values(region, ns, key) == {value} for region in (a, b, c)])

        await eventually(lambda: everywhere(b"first"), 10.0, "the first write at every node")
        before = {
            region: (cluster.nodes[region].engine.get(ns, key), cluster.nodes[region].engine.last_lsn())
            for region in (a, b, c)
        }
        attack = pb.CausalContext(version_vector={b: COUNTER_MAX})
        for request in (
            spb.PutRequest(namespace=ns, key=key, value=b"attack", context=attack),
            spb.DeleteRequest(namespace=ns, key=key, context=attack),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                if isinstance(request, spb.PutRequest):
                    await cluster.stub(a).Put(request, timeout=5)
                else:
                    await cluster.stub(a).Delete(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details() or ""
            assert "no longer accepted" in details and "context_token" in details, details
        assert {
            region: (cluster.nodes[region].engine.get(ns, key), cluster.nodes[region].engine.last_lsn())
            for region in (a, b, c)
        } == before
        # b's later write to the key still reaches every node, and a can supersede it in turn.
        written = await cluster.put(b, ns, key, b"from b")
        assert written.version.dot.node_id == b
        await eventually(lambda: everywhere(b"from b"), 10.0, "b's write at every node")
        await cluster.stub(a).Put(
            spb.PutRequest(namespace=ns, key=key, value=b"from a", context_token=written.context_token),
            timeout=5,
        )
        await eventually(lambda: everywhere(b"from a"), 10.0, "a's write at every node")
    finally:
        await cluster.stop()
