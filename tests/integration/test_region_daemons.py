"""Two node daemons in one region over the region's one MongoDB database: each a node of its
own (node id, dots, change log, audit chain), sharing the region's records, data keys and
erasure block list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from domicile.identity.principal import ExpectedPeer
from domicile.ports import free_port
from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.records import context_from_pb
from node.daemon import Node
from tests.integration import test_subject_rights as subject_rights
from tests.support.cluster import LocalCluster, eventually
from tests.support.mongo import MongoServer
from tests.support.packs import sample_pack
from tests.support.rogue import RogueStream, mutation, rejected

REGION = "eu-west-1"
SECOND = "eu-west-1-2"


@dataclass
class TwoDaemons:
    cluster: LocalCluster
    second: Node
    second_stub: spb_grpc.StorageNodeServiceStub


@pytest.fixture
async def two(tmp_path: Path, mongo_server: MongoServer) -> AsyncIterator[TwoDaemons]:
    cluster = LocalCluster(
        tmp_path,
        ["eu-west-1", "eu-central-1", "us-east-1"],
        pack=sample_pack(),
        namespaces=[
            *subject_rights.NAMESPACES,
            {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
            {"name": "notes_eu", "regions": ["eu-west-1", "eu-central-1"]},
        ],
    )
    shared = {
        "engine": "mongodb",
        "mongodb_uri": mongo_server.uri,
        "mongodb_database": mongo_server.database_name("eu_west_1"),
        "region_dir": str(tmp_path / "eu-west-1-shared"),
    }
    cluster.region_overrides[REGION] = shared
    second: Node | None = None
    channel: grpc.aio.Channel | None = None
    try:
        await cluster.start_linked()
        address = f"127.0.0.1:{free_port()}"
        second = Node(
            cluster.node_config(REGION, node_id=SECOND, listen=address, data_dir=str(tmp_path / SECOND))
        )
        await second.start()
        channel = cluster.channel(second.address, ExpectedPeer.node(REGION, SECOND))
        yield TwoDaemons(cluster, second, spb_grpc.StorageNodeServiceStub(channel))
    finally:
        if channel is not None:
            await channel.close()
        if second is not None:
            await second.stop(grace_s=0.1)
        await cluster.stop()


async def test_each_daemon_writes_replicate_and_both_read_the_regions_records(two: TwoDaemons) -> None:
    c = two.cluster
    first = await c.put(REGION, "instruments", "from-first", b"1")
    second = await two.second_stub.Put(
        spb.PutRequest(namespace="instruments", key="from-second", value=b"2"), timeout=5
    )
    assert first.version.dot.node_id == REGION and second.version.dot.node_id == SECOND
    assert (first.lsn, second.lsn) == (1, 1)  # a change log each
    for key, value in (("from-first", b"1"), ("from-second", b"2")):
        for region in ("eu-central-1", "us-east-1"):

            async def there(region: str = region, key: str = key, value: bytes = value) -> bool:
                return await c.values(region, "instruments", key) == {value}

            await eventually(there, 15, f"{key} at {region}")
        got = await two.second_stub.Get(spb.GetRequest(namespace="instruments", key=key), timeout=5)
        assert [v.value for v in got.versions] == [value]
    # One store: the region's totals are not counted twice.
    assert c.nodes[REGION].engine.counts() == two.second.engine.counts()


async def test_concurrent_writes_through_both_daemons_become_siblings_everywhere(two: TwoDaemons) -> None:
    c = two.cluster
    await c.put(REGION, "notes_eu", "k", b"base")
    read = await c.get(REGION, "notes_eu", "k")
    context = context_from_pb(read.context)
    token = c.nodes[REGION].service.tokens.issue("notes_eu", "k", context)
    # Both supersede what was read, neither knows the other: siblings, on both daemons and abroad.
    await asyncio.gather(
        c.put(REGION, "notes_eu", "k", b"one", context),
        two.second_stub.Put(
            spb.PutRequest(namespace="notes_eu", key="k", value=b"two", context_token=token), timeout=5
        ),
    )
    for region in (REGION, "eu-central-1"):

        async def siblings(region: str = region) -> bool:
            return await c.values(region, "notes_eu", "k") == {b"one", b"two"}

        await eventually(siblings, 15, f"siblings at {region}")
    got = await two.second_stub.Get(spb.GetRequest(namespace="notes_eu", key="k"), timeout=5)
    assert {v.value for v in got.versions} == {b"one", b"two"}


async def test_subject_data_sealed_by_one_daemon_opens_at_the_other_and_an_erasure_blocks_both(
    two: TwoDaemons,
) -> None:
    c = two.cluster
    await subject_rights.put(c, REGION, "customers", "anna", "s-anna", b"Anna, Berlin")
    got = await two.second_stub.Get(spb.GetRequest(namespace="customers", key="anna"), timeout=5)
    assert [v.value for v in got.versions] == [b"Anna, Berlin"]  # the region's data keys are shared
    await subject_rights.replicated(c, ["eu-central-1", "us-east-1"], "customers", "anna")

    opened = await subject_rights.erase(c, "s-anna")
    await subject_rights.completed(c, opened.request_id)
    for region in ("eu-west-1", "eu-central-1", "us-east-1"):
        assert not subject_rights.live(c, region, "customers", "anna"), region
    for put in (
        lambda: subject_rights.put(c, REGION, "customers", "anna-2", "s-anna", b"back?"),
        lambda: two.second_stub.Put(
            spb.PutRequest(namespace="customers", key="anna-3", value=b"back?", subject_id="s-anna",
                           subject_jurisdiction="DE"),
            timeout=5,
        ),
    ):  # fmt: skip

        async def refused(put=put) -> bool:  # type: ignore[no-untyped-def]
            try:
                await put()
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False

        await eventually(refused, 10, "a put about the erased subject refused")


async def test_a_peer_context_naming_the_other_daemons_counters_is_refused(two: TwoDaemons) -> None:
    """Regression: the receiver refused a replicated context naming its own counters beyond what
    it had issued for the key (the key's next dot would pass the counter limit), but over a
    shared database the key state is the other daemon's too: a source could do to the second
    daemon, through the first, what the check forbids, and every write of the key through the
    second daemon then failed."""
    c = two.cluster
    await two.second_stub.Put(spb.PutRequest(namespace="instruments", key="shared", value=b"b"), timeout=5)
    first = c.nodes[REGION]
    poisoned = mutation("eu-central-1", 1, "shared", b"x")
    poisoned.context.CopyFrom(pb.CausalContext(version_vector={SECOND: (1 << 62) - 2}))
    before = rejected(first, "eu-central-1", "context")
    async with RogueStream(c, first, "eu-central-1") as stream:
        ack = await stream.send([poisoned], stream.position + 1)
        assert ack.refused_count == 1
        # Negative control: a context naming only what the second daemon issued is applied.
        honest = mutation("eu-central-1", 2, "shared", b"y", counter=2)
        honest.context.CopyFrom(pb.CausalContext(version_vector={SECOND: 1}))
        ack = await stream.send([honest], stream.position + 2)
        assert ack.refused_count == 0
    assert rejected(first, "eu-central-1", "context") == before + 1
    # The second daemon still writes the key.
    answer = await two.second_stub.Put(
        spb.PutRequest(namespace="instruments", key="shared", value=b"b again"), timeout=5
    )
    assert answer.lsn > 0
