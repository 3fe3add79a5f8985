"""Causal contexts travel to clients as tokens authenticated with the cluster key and bound to
the record: a forged, altered, other key's or other cluster key's token is refused with
INVALID_ARGUMENT, and nothing is written."""

from __future__ import annotations

import secrets

import grpc
import pytest

from domicile.causality import CausalContext
from domicile.cli.output import context_arg, context_json
from domicile.context_tokens import ContextTokens
from domicile.errors import InvalidArgument
from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster, eventually
from tests.support.negatives import audit_mark, denial, refused
from tests.support.tls import CLUSTER, TESTER

NS = "customers_eu"
TESTER_URI = f"spiffe://{CLUSTER}/client/{TESTER}"


async def refused_put(cluster: LocalCluster, key: str, token: bytes, message: str) -> None:
    """Refused as bad input, nothing written, and audited as a refusal with the caller's identity."""
    node = cluster.nodes["eu-west-1"]
    before, seq = (node.engine.get(NS, key), node.engine.last_lsn()), await audit_mark(node)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.stub("eu-west-1").Put(
            spb.PutRequest(namespace=NS, key=key, value=b"evil", context_token=token), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert message in details and "pass the context_token of an earlier" in details, details
    assert (node.engine.get(NS, key), node.engine.last_lsn()) == before
    entry = await denial(node, seq, "storage.Put", TESTER_URI)
    assert entry.rule == "context_token" and entry.namespace == NS and message in entry.detail


async def test_regression_a_context_token_that_does_not_verify_is_counted_and_audited(
    pair: LocalCluster,
) -> None:
    """A forged, altered or other record's token was refused with INVALID_ARGUMENT and left no
    trace but a log line: an attempt to supersede versions with a context the cluster never gave
    the caller went unaudited. Now it is counted and audited (Put and Delete alike) with the
    caller's verified identity."""
    node = pair.nodes["eu-west-1"]
    other = await pair.put("eu-west-1", NS, "other", b"v")
    await pair.put("eu-west-1", NS, "k", b"v")
    before, seq = (node.engine.get(NS, "k"), node.engine.last_lsn()), await audit_mark(node)
    await refused(
        pair.stub("eu-west-1").Delete(
            spb.DeleteRequest(namespace=NS, key="k", context_token=other.context_token), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not verify for customers_eu/k",
    )
    assert (node.engine.get(NS, "k"), node.engine.last_lsn()) == before
    entry = await denial(node, seq, "storage.Delete", TESTER_URI)
    assert entry.rule == "context_token"
    counted = node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "storage.Delete", "reason": "context_token"}
    )
    assert counted == 1
    # A plain context is refused as before, and is no token: nothing is audited for it.
    seq = await audit_mark(node)
    await refused(
        pair.stub("eu-west-1").Put(
            spb.PutRequest(namespace=NS, key="k", value=b"x", context=pb.CausalContext()), timeout=5
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "plain context field is no longer accepted",
    )
    await node.audit.flush()
    assert not [e for e in node.audit.read(seq, 100) if b"access_denied" in e.body]


async def test_a_token_from_one_node_supersedes_at_another(pair: LocalCluster) -> None:
    await pair.put("eu-west-1", NS, "k", b"a")
    await pair.put("eu-central-1", NS, "k", b"b")

    async def both() -> bool:
        return await pair.values("eu-central-1", NS, "k") == {b"a", b"b"}

    await eventually(both, 10.0, "both siblings at eu-central-1")
    got = await pair.get("eu-central-1", NS, "k")
    assert got.context_token
    put = await pair.stub("eu-west-1").Put(
        spb.PutRequest(namespace=NS, key="k", value=b"ab", context_token=got.context_token), timeout=5
    )
    assert put.context_token
    assert await pair.values("eu-west-1", NS, "k") == {b"ab"}
    deleted = await pair.stub("eu-west-1").Delete(
        spb.DeleteRequest(namespace=NS, key="k", context_token=put.context_token), timeout=5
    )
    assert deleted.existed and deleted.context_token


async def test_forged_token_is_refused(pair: LocalCluster) -> None:
    await pair.put("eu-west-1", NS, "k", b"v")
    forged = (
        bytes([1])
        + secrets.token_bytes(32)
        + pb.CausalContext(version_vector={"eu-west-1": 1}).SerializeToString()
    )
    await refused_put(pair, "k", forged, "does not verify for customers_eu/k")
    await refused_put(pair, "k", b"\x01short", "malformed context token")
    await refused_put(pair, "k", b"\x07" + bytes(40), "malformed context token")


async def test_tampered_token_is_refused(pair: LocalCluster) -> None:
    got_before = await pair.put("eu-west-1", NS, "k", b"v")
    token = bytearray(got_before.context_token)
    # Raise this node's counter in the signed context: the MAC no longer matches.
    tampered = (
        bytes(token[:33]) + pb.CausalContext(version_vector={"eu-west-1": (1 << 62) - 2}).SerializeToString()
    )
    await refused_put(pair, "k", tampered, "does not verify for customers_eu/k")
    token[5] ^= 0x01
    await refused_put(pair, "k", bytes(token), "does not verify for customers_eu/k")


async def test_a_token_for_another_key_is_refused(pair: LocalCluster) -> None:
    other = await pair.put("eu-west-1", NS, "other", b"v")
    await pair.put("eu-west-1", NS, "k", b"v")
    await refused_put(pair, "k", other.context_token, "does not verify for customers_eu/k")


async def test_a_token_under_an_old_cluster_key_is_refused(pair: LocalCluster) -> None:
    await pair.put("eu-west-1", NS, "k", b"v")
    old_key = ContextTokens(secrets.token_bytes(32))
    stale = old_key.issue(NS, "k", CausalContext.of({"eu-west-1": 1}))
    await refused_put(pair, "k", stale, "made under another cluster key")


async def refused_plain(cluster: LocalCluster, request: spb.PutRequest | spb.DeleteRequest) -> str:
    node = cluster.nodes["eu-west-1"]
    before = (node.engine.get(NS, request.key), node.engine.last_lsn())
    stub = cluster.stub("eu-west-1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if isinstance(request, spb.PutRequest):
            await stub.Put(request, timeout=5)
        else:
            await stub.Delete(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (node.engine.get(NS, request.key), node.engine.last_lsn()) == before
    return info.value.details() or ""


async def test_the_plain_context_is_refused_and_writes_nothing(pair: LocalCluster) -> None:
    """Nothing authenticates a plain context: Put and Delete refuse it, alone or with a token."""
    put = await pair.put("eu-west-1", NS, "k", b"v1")
    for request in (
        spb.PutRequest(namespace=NS, key="k", value=b"v2", context=put.context),
        spb.PutRequest(
            namespace=NS, key="k", value=b"v2", context=put.context, context_token=put.context_token
        ),
        spb.DeleteRequest(namespace=NS, key="k", context=put.context),
        spb.DeleteRequest(namespace=NS, key="k", context=put.context, context_token=put.context_token),
        spb.PutRequest(namespace=NS, key="k", value=b"v2", context=pb.CausalContext()),
    ):
        details = await refused_plain(pair, request)
        assert "plain context field is no longer accepted" in details, details
        assert "pass the context_token of an earlier Get, Put, Delete or Scan of this key" in details, details
    # A malformed plain context is still reported as malformed.
    details = await refused_plain(
        pair,
        spb.PutRequest(namespace=NS, key="k", value=b"v2", context=pb.CausalContext(version_vector={"x": 0})),
    )
    assert "malformed causal context" in details, details
    assert await pair.values("eu-west-1", NS, "k") == {b"v1"}


async def test_scan_items_carry_their_own_tokens(pair: LocalCluster) -> None:
    await pair.put("eu-west-1", NS, "s1", b"1")
    await pair.put("eu-west-1", NS, "s2", b"2")
    page = await pair.stub("eu-west-1").Scan(spb.ScanRequest(namespace=NS, key_prefix="s"), timeout=5)
    tokens = {item.key: item.context_token for item in page.items}
    await pair.stub("eu-west-1").Put(
        spb.PutRequest(namespace=NS, key="s1", value=b"1b", context_token=tokens["s1"]), timeout=5
    )
    assert await pair.values("eu-west-1", NS, "s1") == {b"1b"}
    await refused_put(pair, "s1", tokens["s2"], "does not verify for customers_eu/s1")


async def test_the_sdk_and_cli_pass_tokens_through_unchanged(pair: LocalCluster) -> None:
    async with pair.async_client(region="eu-west-1") as client:
        first = await client.put(NS, "sdk", b"1")
        second = await client.put(NS, "sdk", b"2", context_token=first.context_token)
        got = await client.get(NS, "sdk")
        assert got.values == (b"2",) and got.context_token == second.context_token
        deleted = await client.delete(NS, "sdk", context_token=got.context_token)
        assert deleted.existed and deleted.context_token
        with pytest.raises(InvalidArgument, match="does not verify"):
            await client.put(NS, "sdk", b"3", context_token=first.context_token[:-1] + b"\x00")
        # A plain context is refused before anything is sent, alone or with a token.
        lsn = pair.nodes["eu-west-1"].engine.last_lsn()
        with pytest.raises(InvalidArgument, match="pass context_token="):
            await client.put(NS, "sdk", b"3", context=got.context)
        with pytest.raises(InvalidArgument, match="pass context_token="):
            await client.put(NS, "sdk", b"3", context=got.context, context_token=got.context_token)
        with pytest.raises(InvalidArgument, match="pass context_token="):
            await client.delete(NS, "sdk", context=got.context)
        assert pair.nodes["eu-west-1"].engine.last_lsn() == lsn
    # The CLI prints the token and reads it back as the same bytes; a plain context printed by
    # an older CLI is refused.
    assert context_arg(context_json(got.context, got.context_token)) == got.context_token
    with pytest.raises(InvalidArgument, match="plain context printed by an older CLI"):
        context_arg(context_json(got.context))
