"""A commit whose answer is lost, against a real SecantusDB and a real redis-server: the database
commits, the connection goes before its answer arrives, the retries of the commit find the
database unreachable, and the write (or the replicated apply, run as a job of the group
committer) fails UNAVAILABLE though it is durable. The node's own cache must not keep serving
the state it replaced: the change stream skips the change as this process's own, so the group
committer reports the keys of a batch or job the engine failed before rejecting it.

The answer is lost by a TCP proxy between the node and the database (tests/support/tcp_proxy.py)
that lets the commit through and drops the database's answer to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from pymongo.uri_parser import parse_uri

from domicile.causality import Dot, KeyState, Mutation, Version, sha256
from domicile.errors import Unavailable
from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.read_cache import CacheSettings, Hit, ReadCache
from node.engine.base import LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.mongo import MongoEngine
from node.engine.mongo_changes import RegionChanges, await_for_bound
from tests.cache.reads import read_through
from tests.support.cluster import eventually
from tests.support.mongo import MongoServer
from tests.support.tcp_proxy import TcpProxy

REGION = "eu-west-1"
NAMESPACE = "ns"
KEY = "x"
LAG_MAX_S = 0.5
# What the driver sends to commit a transaction: the command's name as a BSON key.
COMMIT_COMMAND = b"commitTransaction\x00"
# Far longer than an invalidation takes, far shorter than the entries' life (300 s).
CATCH_UP_S = 10.0


@dataclass
class Node:
    engine: MongoEngine
    cache: ReadCache
    committer: GroupCommitter
    proxy: TcpProxy
    clock: HybridClock

    async def values(self) -> set[bytes]:
        state = await read_through(self.cache, NAMESPACE, KEY, lambda: self.engine.get(NAMESPACE, KEY))
        return {v.value for v in state.versions} if state is not None else set()

    async def trusted(self) -> bool:
        others = self.cache.others
        return self.cache.coherence.usable and others is not None and others.trusted()


@asynccontextmanager
async def node_behind_proxy(mongo_server: MongoServer, redis: RedisServer) -> AsyncIterator[Node]:
    """One daemon's engine, group committer, read cache and change stream, its every connection
    to the database through a proxy (its blocking calls run on threads: the proxy forwards on
    this event loop)."""
    host, port = parse_uri(mongo_server.uri)["nodelist"][0]
    proxy = TcpProxy(f"{host}:{port}")
    await proxy.start()
    engine = await asyncio.to_thread(
        MongoEngine,
        # Server selection bounded well below the default 2 s: each of the commit's retries waits
        # that long for the partitioned database before it gives up.
        f"mongodb://{proxy.address}/?directConnection=true&serverSelectionTimeoutMS=300",
        mongo_server.database_name("unknown"),
        "d1",
        REGION,
    )
    settings = CacheSettings(
        url=redis.url, region=REGION, ttl_s=300, deadline_s=1.0, heartbeat_s=0.05, others_lag_max_s=LAG_MAX_S
    )
    cache = ReadCache(settings, node_id="d1", shared_store=True)
    clock = HybridClock()
    committer = GroupCommitter(
        engine, clock.now, batch_records_max=16, queue_records_max=100, on_keys_changed=cache.changed
    )
    committer.start()
    cache.start()
    assert cache.others is not None
    changes = RegionChanges(engine.mongo, cache.others, await_s=await_for_bound(LAG_MAX_S))
    changes.start()
    try:
        yield Node(engine, cache, committer, proxy, clock)
    finally:
        await asyncio.to_thread(changes.close)
        await committer.stop()
        await cache.close_loop_client()
        await asyncio.to_thread(cache.close)
        await asyncio.to_thread(engine.close)
        await proxy.stop()


async def cached_v1(node: Node) -> KeyState:
    await node.committer.submit(LocalWrite(NAMESPACE, KEY, value=b"v1"))
    await eventually(node.trusted, 20.0, "the cache ready and the stream confirmed")

    async def v1_hit() -> bool:
        return await node.values() == {b"v1"} and isinstance(await node.cache.lookup(NAMESPACE, KEY), Hit)

    await eventually(v1_hit, 10.0, "v1 filled into the cache")
    found = await node.cache.lookup(NAMESPACE, KEY)
    assert isinstance(found, Hit) and found.state is not None
    return found.state


async def lose_the_answer(node: Node, change: Callable[[], Awaitable[object]]) -> None:
    """Runs `change` with the answer to its commit lost; it must fail
    UNAVAILABLE, then the database is reachable again and holds v2."""
    node.proxy.lose_answer_to(COMMIT_COMMAND)
    with pytest.raises(Unavailable) as raised:
        await change()
    print("the change was answered:", raised.value)
    assert node.proxy.answers_lost == 1
    node.proxy.heal()

    async def holds_v2() -> bool:
        # The driver finds the healed server again within its server selection timeout or the
        # next one (it rechecks a lost server every 0.5 s at most).
        try:
            stored = await asyncio.to_thread(node.engine.get, NAMESPACE, KEY)
        except Unavailable:
            return False
        assert stored is not None and {v.value for v in stored.versions} == {b"v2"}, "the commit was durable"
        return True

    await eventually(holds_v2, CATCH_UP_S, "the healed database answering")


async def cache_follows_the_store(node: Node) -> None:
    async def v2_answered() -> bool:
        # Asked only while the cache is trusted: a distrusted cache reads the store, which
        # would hide a stale entry.
        return await node.trusted() and await node.values() == {b"v2"}

    await eventually(v2_answered, CATCH_UP_S, "the cache to answer v2, which the store holds")


async def test_a_local_write_whose_commit_answer_was_lost_is_not_hidden_by_the_cache(
    mongo_server: MongoServer, redis: RedisServer
) -> None:
    async with node_behind_proxy(mongo_server, redis) as node:
        await cached_v1(node)
        await lose_the_answer(node, lambda: node.committer.submit(LocalWrite(NAMESPACE, KEY, value=b"v2")))
        await cache_follows_the_store(node)


async def test_a_replicated_apply_whose_commit_answer_was_lost_is_not_hidden_by_the_cache(
    mongo_server: MongoServer, redis: RedisServer
) -> None:
    async with node_behind_proxy(mongo_server, redis) as node:
        v1 = await cached_v1(node)
        # A peer's write that supersedes v1, as a replication stream delivers it.
        version = Version(
            Dot("peer", 1), b"v2", node.clock.now(), checksum=sha256(b"v2"), origin_region=REGION
        )
        mutation = Mutation(NAMESPACE, KEY, v1.context, version, lsn=1, origin_node_id="peer")

        def apply(engine: StorageEngine) -> object:
            return engine.apply_remote("peer", [mutation], 1)

        await lose_the_answer(node, lambda: node.committer.run(apply))
        await cache_follows_the_store(node)
