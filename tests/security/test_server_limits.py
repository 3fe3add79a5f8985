"""The node's server limits: message sizes per service, byte admission on the write queue, a
byte budget on scan pages and on what one record may weigh in a read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from coordinator.config import CoordinatorLimits
from domicile.model import Limits
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.limits import (
    NODE_STREAMS_PER_CONNECTION_MAX,
    REPLICATION_MESSAGE_BYTES_MAX,
    STORAGE_REQUEST_BYTES_MAX,
)
from node.api.limits import NODE_SERVER_OPTIONS
from node.engine.base import StorageEngine
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark, denial, entries_since, refused
from tests.support.rogue import ROGUE, RogueStream, mutation
from tests.support.tls import CLUSTER, TESTER

NS = "customers_eu"
MIB = 1024 * 1024


@pytest.fixture
async def node_with(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One EU node with small limits, so that the tests reach them with little data."""
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start_coordinator()
    await cluster.start_node(
        "eu-west-1",
        limits=Limits(write_queue_bytes_max=MIB, scan_page_bytes_max=10_000, read_record_bytes_max=50_000),
    )
    try:
        yield cluster
    finally:
        await cluster.stop()


def test_the_node_server_bounds_streams_and_enforces_keepalive() -> None:
    options = dict(NODE_SERVER_OPTIONS)
    assert options["grpc.max_concurrent_streams"] == NODE_STREAMS_PER_CONNECTION_MAX
    assert options["grpc.max_receive_message_length"] == REPLICATION_MESSAGE_BYTES_MAX
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.keepalive_permit_without_calls"] == 1
    # The replication senders ping every 10 s: well within what the server accepts.
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] <= 10_000


async def test_an_oversized_storage_request_is_refused_with_resource_exhausted(pair: LocalCluster) -> None:
    node = pair.nodes["eu-west-1"]
    before = (node.engine.last_lsn(), node.engine.counts())
    big = b"x" * (STORAGE_REQUEST_BYTES_MAX + 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pair.stub("eu-west-1").Put(spb.PutRequest(namespace=NS, key="big", value=big), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"accepts at most {STORAGE_REQUEST_BYTES_MAX} bytes per request" in (info.value.details() or "")
    assert (node.engine.last_lsn(), node.engine.counts()) == before
    # Under the message bound, the record limits answer as before.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pair.stub("eu-west-1").Put(
            spb.PutRequest(namespace=NS, key="big", value=big[: 2 * MIB]), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_regression_an_oversized_storage_request_is_counted_and_audited(pair: LocalCluster) -> None:
    """A storage request over the message bound was refused before it was decoded and left no
    trace: neither counted nor audited, so a client probing the bound went unseen. Now it is a
    refusal like any other, with the caller's verified identity."""
    node = pair.nodes["eu-west-1"]
    before, seq = (node.engine.last_lsn(), node.engine.counts()), await audit_mark(node)
    big = b"x" * (STORAGE_REQUEST_BYTES_MAX + 1)
    await refused(
        pair.stub("eu-west-1").Put(spb.PutRequest(namespace=NS, key="big", value=big), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"accepts at most {STORAGE_REQUEST_BYTES_MAX} bytes per request",
    )
    assert (node.engine.last_lsn(), node.engine.counts()) == before
    entry = await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/{TESTER}")
    assert entry.rule == "too_large" and f"at most {STORAGE_REQUEST_BYTES_MAX} bytes" in entry.detail
    counted = node.metrics.registry.get_sample_value(
        "domicile_authz_refusals_total", {"action": "storage.Put", "reason": "too_large"}
    )
    assert counted == 1


async def test_replication_takes_larger_messages_than_storage_up_to_its_own_bound(
    pair_and_rogue: LocalCluster,
) -> None:
    target = pair_and_rogue.nodes["eu-central-1"]
    # Five values of 1 MiB: more than a storage request may weigh, within a replication batch.
    async with RogueStream(pair_and_rogue, target, ROGUE) as rogue:
        batch = [mutation(ROGUE, i, f"r{i}", b"v" * MIB) for i in range(1, 6)]
        ack = await rogue.send(batch, 5)
        assert (ack.applied_through_lsn, ack.refused_count) == (5, 0)
    before = target.engine.last_lsn(), target.engine.counts()
    position = target.engine.inbound_position(ROGUE)
    seq = await audit_mark(target)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with RogueStream(pair_and_rogue, target, ROGUE) as rogue:
            values = (REPLICATION_MESSAGE_BYTES_MAX // MIB) + 1
            await rogue.send(
                [mutation(ROGUE, 5 + i, f"o{i}", b"v" * MIB) for i in range(1, values + 1)], 5 + values
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (target.engine.last_lsn(), target.engine.counts()) == before
    assert position == 5 and target.engine.inbound_position(ROGUE) == position
    # gRPC refuses a stream message over the server's bound before any handler runs, so no
    # entry can name the sender; none claims anything was received or refused for it either.
    assert not [
        e for e in await entries_since(target, seq) if e.decision == "refuse" or e.key.startswith("o")
    ]


async def test_the_write_queue_refuses_values_past_its_byte_bound(node_with: LocalCluster) -> None:
    node = node_with.nodes["eu-west-1"]
    gate = threading.Event()
    entered = threading.Event()

    def hold(engine: StorageEngine) -> None:
        entered.set()
        gate.wait(10)

    held = asyncio.ensure_future(node.committer.run(hold))
    try:
        await asyncio.to_thread(entered.wait, 10)
        stub = node_with.stub("eu-west-1")
        first = asyncio.ensure_future(
            stub.Put(spb.PutRequest(namespace=NS, key="q1", value=b"a" * 700_000), timeout=10)
        )
        while node.committer.queued_bytes == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Put(spb.PutRequest(namespace=NS, key="q2", value=b"b" * 700_000), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert "write_queue_bytes_max" in details and f"limit of {MIB} bytes" in details, details
    finally:
        gate.set()
        await held
    assert (await first).lsn > 0
    assert node.engine.get(NS, "q2") is None
    assert node.committer.queued_bytes == 0
    await stub.Put(spb.PutRequest(namespace=NS, key="q2", value=b"b" * 700_000), timeout=10)


async def test_a_scan_page_stops_at_its_byte_budget_and_pages_on(node_with: LocalCluster) -> None:
    for i in range(10):
        await node_with.put("eu-west-1", NS, f"s{i}", b"v" * 3_000)
    stub = node_with.stub("eu-west-1")
    keys: list[str] = []
    pages = 0
    token = ""
    while True:
        page = await stub.Scan(
            spb.ScanRequest(namespace=NS, key_prefix="s", page_size=100, page_token=token), timeout=5
        )
        pages += 1
        assert 1 <= len(page.items) <= 3
        assert sum(len(v.value) for item in page.items for v in item.versions) <= 10_000
        keys += [item.key for item in page.items]
        token = page.next_page_token
        if not token:
            break
    assert keys == [f"s{i}" for i in range(10)]
    assert pages >= 4


async def test_a_record_with_too_many_siblings_is_refused_clearly_and_can_be_resolved(
    node_with: LocalCluster,
) -> None:
    stub = node_with.stub("eu-west-1")
    for i in range(2):
        # Blind writes in a siblings namespace: two concurrent versions of 20 KB.
        await stub.Put(spb.PutRequest(namespace=NS, key="heavy", value=bytes([65 + i]) * 20_000), timeout=5)
    # A third would make the record heavier than a read answers: the write is refused, so that
    # the key stays readable (and resolvable with its context).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Put(spb.PutRequest(namespace=NS, key="heavy", value=b"C" * 20_000), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "read_record_bytes_max" in (refused.value.details() or "")
    # A record can still get too heavy: replicas merge concurrent writers' versions, or the
    # operator lowers the bound. Here, the bound.
    await node_with.stop_node("eu-west-1")
    await node_with.start_node(
        "eu-west-1",
        limits=Limits(write_queue_bytes_max=MIB, scan_page_bytes_max=10_000, read_record_bytes_max=30_000),
    )
    stub = node_with.stub("eu-west-1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Get(spb.GetRequest(namespace=NS, key="heavy"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert "has 2 live versions (siblings)" in details and "at most 30000 bytes" in details, details
    assert "read_record_bytes_max" in details and "Delete without a context" in details
    # A scan that starts at the record says the same; one that reaches it ends its page before it.
    await node_with.put("eu-west-1", NS, "hea", b"light")
    page = await stub.Scan(spb.ScanRequest(namespace=NS, key_prefix="hea"), timeout=5)
    assert [item.key for item in page.items] == ["hea"] and page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Scan(
            spb.ScanRequest(namespace=NS, key_prefix="hea", page_token=page.next_page_token), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The way out the message names.
    await stub.Delete(spb.DeleteRequest(namespace=NS, key="heavy"), timeout=5)
    await stub.Put(spb.PutRequest(namespace=NS, key="heavy", value=b"resolved"), timeout=5)
    assert await node_with.values("eu-west-1", NS, "heavy") == {b"resolved"}


async def test_an_oversized_coordinator_request_is_refused_with_resource_exhausted(
    pair: LocalCluster,
) -> None:
    limits = CoordinatorLimits()
    # The certificate of the node the request names: had it been small, the call was allowed.
    async with pair.channel_as_node("eu-west-1", pair.coordinator_address, node_id="n1") as channel:
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RegisterNode(
                cpb.RegisterNodeRequest(
                    node_id="n1", region="eu-west-1", address="x" * limits.request_bytes_max
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert pair.coordinator is not None
    topology = pair.nodes["eu-west-1"].view.topology
    assert topology.node("n1") is None
