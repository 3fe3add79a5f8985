"""Every bad input gets a precise status and message, and leaves the store exactly as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["eu-west-1", "us-east-1"])
    await cluster.start()
    # The replication tests below speak as eu-west-1, which us-east-1 accepts once linked.
    await cluster.wait_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def put_request(**fields: Any) -> spb.PutRequest:
    base: dict[str, Any] = {"namespace": "customers_eu", "key": "k", "value": b"v"}
    base.update(fields)
    context = base.pop("context", None)
    request = spb.PutRequest(**base)
    if context is not None:
        request.context.CopyFrom(context)
    return request


CASES = [
    (
        # Refused like a namespace the caller may not use: NotFound (with the names that exist)
        # only for callers the policies allow (test_namespace_disclosure.py).
        "unknown namespace",
        put_request(namespace="nope"),
        grpc.StatusCode.PERMISSION_DENIED,
        "may not call storage.Put on namespace 'nope'",
    ),
    (
        "bad namespace name",
        put_request(namespace="Bad-Name"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid namespace",
    ),
    ("empty key", put_request(key=""), grpc.StatusCode.INVALID_ARGUMENT, "key is empty"),
    ("oversized key", put_request(key="k" * 1025), grpc.StatusCode.INVALID_ARGUMENT, "limit is 1024 bytes"),
    ("NUL in key", put_request(key="a\x00b"), grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    (
        "oversized value",
        put_request(value=b"x" * (1024 * 1024 + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit is 1048576 bytes",
    ),
    (
        "zero counter in context",
        put_request(context=pb.CausalContext(version_vector={"eu-west-1": 0})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed causal context",
    ),
    (
        "dot without node",
        put_request(context=pb.CausalContext(dots=[pb.Dot(node_id="", counter=3)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed causal context",
    ),
    (
        "unknown classification",
        put_request(classification=42),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown classification value 42",
    ),
    (
        "looser classification",
        put_request(classification=pb.CLASSIFICATION_PUBLIC),
        grpc.StatusCode.INVALID_ARGUMENT,
        "looser than the namespace default",
    ),
    (
        "bad jurisdiction",
        put_request(subject_jurisdiction="germany"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ISO 3166",
    ),
]


@pytest.mark.parametrize(("name", "request_", "code", "message"), CASES, ids=[c[0] for c in CASES])
async def test_bad_put_is_refused_and_writes_nothing(
    single: LocalCluster, name: str, request_: spb.PutRequest, code: grpc.StatusCode, message: str
) -> None:
    node = single.nodes["eu-west-1"]
    before = (node.engine.last_lsn(), node.engine.counts())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await single.stub("eu-west-1").Put(request_, timeout=5)
    assert info.value.code() == code, info.value.details()
    assert message in (info.value.details() or ""), info.value.details()
    assert (node.engine.last_lsn(), node.engine.counts()) == before


async def test_scan_bad_page_size_and_token(single: LocalCluster) -> None:
    stub = single.stub("eu-west-1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Scan(spb.ScanRequest(namespace="customers_eu", page_size=5000), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use 1 to 1000" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Scan(spb.ScanRequest(namespace="customers_eu", page_token="!!!"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page token" in (info.value.details() or "")


async def test_a_call_without_deadline_gets_the_default_and_succeeds(single: LocalCluster) -> None:
    stub = single.stub("eu-west-1")
    response = await stub.Put(spb.PutRequest(namespace="customers_eu", key="nodeadline", value=b"v"))
    assert response.lsn > 0


async def test_scan_pages_through_every_live_record(single: LocalCluster) -> None:
    for i in range(25):
        await single.put("eu-west-1", "customers_eu", f"p{i:02}", b"v")
    await single.stub("eu-west-1").Delete(spb.DeleteRequest(namespace="customers_eu", key="p03"), timeout=5)
    keys: list[str] = []
    token = ""
    while True:
        page = await single.stub("eu-west-1").Scan(
            spb.ScanRequest(namespace="customers_eu", key_prefix="p", page_size=10, page_token=token),
            timeout=5,
        )
        keys += [item.key for item in page.items]
        token = page.next_page_token
        if not token:
            break
    assert keys == [f"p{i:02}" for i in range(25) if i != 3]


async def test_delete_reports_existence_and_leaves_a_tombstone(single: LocalCluster) -> None:
    stub = single.stub("eu-west-1")
    await single.put("eu-west-1", "customers_eu", "gone", b"v")
    first = await stub.Delete(spb.DeleteRequest(namespace="customers_eu", key="gone"), timeout=5)
    again = await stub.Delete(spb.DeleteRequest(namespace="customers_eu", key="gone"), timeout=5)
    assert first.existed and not again.existed
    got = await single.get("eu-west-1", "customers_eu", "gone")
    assert not got.found and got.context.version_vector["eu-west-1"] >= 2


async def test_a_rogue_source_cannot_push_records_outside_scope(single: LocalCluster) -> None:
    """A node that ignores the scope (its key stolen, or a bug) streams EU personal data to a US
    region it is linked to: its identity checks out, the record is still refused, not stored."""
    target = single.nodes["us-east-1"]
    channel = single.channel_as_node("eu-west-1", target.address)
    try:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
        await call.write(
            rpb.ReplicateRequest(
                hello=rpb.ReplicationHello(
                    source_node_id="eu-west-1", source_region="eu-west-1", target_node_id="us-east-1"
                )
            )
        )
        ready = await call.read()
        assert ready.ready.resume_after_lsn == 0
        mutation = pb.Mutation(namespace="customers_eu", key="stolen", lsn=1, origin_node_id="eu-west-1")
        mutation.version.dot.node_id = "eu-west-1"
        mutation.version.dot.counter = 1
        mutation.version.value = b"personal"
        mutation.version.classification = pb.CLASSIFICATION_PERSONAL
        await call.write(
            rpb.ReplicateRequest(batch=rpb.ReplicationBatch(mutations=[mutation], through_lsn=1))
        )
        ack = await call.read()
        assert ack.ack.refused_count == 1 and ack.ack.applied_through_lsn == 1
        await call.done_writing()
    finally:
        await channel.close()
    assert target.engine.get("customers_eu", "stolen") is None
    refused = target.metrics.registry.get_sample_value(
        "domicile_replication_refused_total", {"source": "eu-west-1", "target": "us-east-1"}
    )
    assert refused == 1


async def test_replication_to_the_wrong_node_is_refused(single: LocalCluster) -> None:
    target = single.nodes["us-east-1"]
    channel = single.channel_as_node("eu-west-1", target.address)
    try:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
        await call.write(
            rpb.ReplicateRequest(
                hello=rpb.ReplicationHello(
                    source_node_id="eu-west-1", source_region="eu-west-1", target_node_id="someone-else"
                )
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "refresh the topology" in (info.value.details() or "")
    finally:
        await channel.close()
