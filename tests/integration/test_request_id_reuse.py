"""Regression: a Delete carrying the request id of an earlier Put of the same key is answered OK with a
tombstone, yet nothing is deleted: the node takes it for a retry of the Put and answers the
Put's mark dressed up as a tombstone. The record stays live, the client is told it is gone.
Likewise a Put reusing an id with another value is answered OK with the new value while the
store keeps the first (node/engine/core.py _build_local -> _replay: the mark is matched by id
alone, and the answer is built from this attempt's fields, not the first attempt's)."""

from __future__ import annotations

import grpc

from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster


async def test_delete_with_a_put_request_id_is_not_answered_as_done_while_nothing_is_deleted(
    eu_node: LocalCluster,
) -> None:
    stub = eu_node.stub("eu-west-1")
    await stub.Put(
        spb.PutRequest(namespace="prefs_eu", key="k", value=b"v", request_id="req-shared-1"), timeout=5
    )
    try:
        answer = await stub.Delete(
            spb.DeleteRequest(namespace="prefs_eu", key="k", request_id="req-shared-1"), timeout=5
        )
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert "used for a different write" in (refused.details() or "")
        assert (await eu_node.values("eu-west-1", "prefs_eu", "k")) == {b"v"}
        return
    read = await eu_node.get("eu-west-1", "prefs_eu", "k")
    # Answered OK as a delete (a tombstone version): the record must then be gone.
    assert answer.version.tombstone
    assert not read.found, (
        f"Delete answered OK with a tombstone (dot {answer.version.dot.node_id}:"
        f"{answer.version.dot.counter}, lsn {answer.lsn}) but the record is still live: "
        f"{[v.value for v in read.versions]}"
    )


async def test_put_with_a_reused_request_id_and_another_value_is_not_answered_as_written(
    eu_node: LocalCluster,
) -> None:
    stub = eu_node.stub("eu-west-1")
    await stub.Put(
        spb.PutRequest(namespace="prefs_eu", key="k2", value=b"first", request_id="req-shared-2"), timeout=5
    )
    try:
        answer = await stub.Put(
            spb.PutRequest(namespace="prefs_eu", key="k2", value=b"second", request_id="req-shared-2"),
            timeout=5,
        )
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert (await eu_node.values("eu-west-1", "prefs_eu", "k2")) == {b"first"}
        # The same write again is still a retry, answered with the first attempt's version.
        again = await stub.Put(
            spb.PutRequest(namespace="prefs_eu", key="k2", value=b"first", request_id="req-shared-2"),
            timeout=5,
        )
        assert again.version.value == b"first" and again.version.dot.counter == 1
        return
    read = await eu_node.get("eu-west-1", "prefs_eu", "k2")
    stored = [v.value for v in read.versions]
    # The answer names the value it claims was written: it must be what the store holds.
    assert stored == [answer.version.value], (
        f"Put answered OK with value {answer.version.value!r} but the store holds {stored}"
    )
