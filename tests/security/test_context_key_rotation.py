"""The cluster's context key is replaced in three rolling steps without refusing a token clients
hold (README "Rotating the context key"): the new key accepted second on every node, then
first, then the old key removed. Each step restarts real nodes on a key file of its own."""

from __future__ import annotations

import os
import re
import secrets

import grpc
import pytest

from domicile.errors import FailedPrecondition
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark, denial
from tests.support.tls import CLUSTER, TESTER

NS = "customers_eu"
WEST, CENTRAL = "eu-west-1", "eu-central-1"


def key_file(cluster: LocalCluster, name: str, *keys: bytes) -> str:
    path = cluster.root / name
    path.write_bytes(b"".join(keys))
    os.chmod(path, 0o600)
    return str(path)


async def restart(cluster: LocalCluster, region: str, keys: str) -> None:
    await cluster.stop_node(region)
    await cluster.start_node(region, context_key_file=keys)


def later_key_tokens(cluster: LocalCluster, region: str, position: int) -> float:
    count = cluster.nodes[region].metrics.registry.get_sample_value(
        "domicile_context_tokens_later_key_total", {"position": str(position)}
    )
    return count or 0.0


async def put(cluster: LocalCluster, region: str, key: str, value: bytes, token: bytes) -> bytes:
    answer = await cluster.stub(region).Put(
        spb.PutRequest(namespace=NS, key=key, value=value, context_token=token), timeout=5
    )
    assert await cluster.values(region, NS, key) == {value}
    token_out: bytes = answer.context_token
    return token_out


async def test_a_token_of_the_old_key_supersedes_through_a_rotation_until_the_key_is_removed(
    pair: LocalCluster,
) -> None:
    old = pair.context_key_file.read_bytes()
    new = secrets.token_bytes(32)
    # Before: a client holds a token of the old key for each of two records.
    held = (await pair.put(WEST, NS, "a", b"a0")).context_token
    kept = (await pair.put(WEST, NS, "b", b"b0")).context_token

    # Step 1 on every node: the new key accepted, the old one still issuing.
    adding = key_file(pair, "adding.key", old, new)
    for region in (WEST, CENTRAL):
        await restart(pair, region, adding)
    held = await put(pair, WEST, "a", b"a1", held)
    assert later_key_tokens(pair, WEST, 2) == 0  # still the old key's token, issued first

    # Step 2, one node at a time: the new key issues at eu-west-1 while eu-central-1 still
    # issues under the old one; each accepts the other's tokens.
    promoted = key_file(pair, "promoted.key", new, old)
    await restart(pair, WEST, promoted)
    held = await put(pair, WEST, "a", b"a2", held)  # the old key's token, accepted second
    assert later_key_tokens(pair, WEST, 2) == 1
    new_token = (await pair.put(WEST, NS, "c", b"c0")).context_token
    old_token = await put(pair, CENTRAL, "c", b"c1", new_token)
    await put(pair, WEST, "c", b"c2", old_token)
    await restart(pair, CENTRAL, promoted)

    # Step 3: the old key removed. A token clients kept from before is refused, writes nothing,
    # and the client reads the key again for a token of the new key.
    await restart(pair, WEST, key_file(pair, "after.key", new))
    node = pair.nodes[WEST]
    before, seq = (node.engine.get(NS, "b"), node.engine.last_lsn()), await audit_mark(node)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(pair, WEST, "b", b"b1", kept)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "made under another cluster key" in details and "pass the context_token of an earlier" in details
    assert (node.engine.get(NS, "b"), node.engine.last_lsn()) == before
    entry = await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/{TESTER}")
    assert entry.rule == "context_token"
    fresh = (await pair.get(WEST, NS, "b")).context_token
    await put(pair, WEST, "b", b"b1", fresh)
    # The token held through the rotation was issued under the new key at step 2: still good.
    await put(pair, WEST, "a", b"a3", held)
    assert later_key_tokens(pair, WEST, 2) == 0


async def test_a_token_of_a_key_the_node_is_not_given_is_refused(pair: LocalCluster) -> None:
    # A token issued under key A opens at a node given [B, A] and not at one given [B] alone.
    a = pair.context_key_file.read_bytes()
    b = secrets.token_bytes(32)
    token = (await pair.put(WEST, NS, "k", b"v0")).context_token
    await restart(pair, WEST, key_file(pair, "b-only.key", b))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await put(pair, WEST, "k", b"v1", token)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "made under another cluster key" in (info.value.details() or "")
    assert await pair.values(WEST, NS, "k") == {b"v0"}
    await restart(pair, WEST, key_file(pair, "b-then-a.key", b, a))
    await put(pair, WEST, "k", b"v1", token)
    assert later_key_tokens(pair, WEST, 2) == 1


async def test_a_context_key_file_of_a_wrong_size_stops_the_node_before_its_store_opens(
    pair: LocalCluster,
) -> None:
    await pair.put(WEST, NS, "k", b"v")
    await pair.stop_node(WEST)
    key = pair.context_key_file.read_bytes()
    for name, data, message in (
        ("newline.key", key + b"\n", "holds 33 bytes; it must hold 1 to 4 keys of exactly 32 bytes"),
        ("five.key", b"".join(secrets.token_bytes(32) for _ in range(5)), "holds 160 bytes"),
        ("twice.key", key + key, "holds key 1 again as key 2"),
    ):
        path = key_file(pair, name, data)
        with pytest.raises(FailedPrecondition, match=re.escape(f"context key file {path} {message}")):
            await pair.start_node(WEST, context_key_file=path)
    # Refused before anything is opened or made: a new node's data directory is not created.
    fresh = pair.root / "fresh"
    with pytest.raises(FailedPrecondition, match="holds 33 bytes"):
        await pair.start_node(
            WEST, data_dir=str(fresh), context_key_file=key_file(pair, "bad.key", key + b"x")
        )
    assert not fresh.exists()
    # The node starts on its store with a good file.
    await pair.start_node(WEST, context_key_file=key_file(pair, "good.key", secrets.token_bytes(32), key))
    assert await pair.values(WEST, NS, "k") == {b"v"}
