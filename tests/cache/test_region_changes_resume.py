"""The region's change stream (node/engine/mongo_changes.py) across a broken connection, against a
real SecantusDB and a real redis-server: a write another daemon acknowledges while this daemon
cannot reach the database reaches this daemon's cache once it can again, because the stream
resumes after the last change it handled instead of starting from now. Only this daemon's link
to the database is cut (a TCP proxy between them); the other daemon keeps writing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pymongo.uri_parser import parse_uri

from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.others import OtherWriters
from node.cache.read_cache import CacheSettings, Hit, ReadCache
from node.engine.base import LocalWrite
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
# Far longer than the stream needs to catch up, far shorter than the entries' life: a stale
# entry still answered after this is one the stream never reported.
CATCH_UP_S = 10.0


@dataclass
class Heard:
    """The stream's listener (the cache's OtherWriters), with what it heard counted."""

    others: OtherWriters
    unreachable_calls: int = 0
    reconnects: int = 0
    losses: int = 0

    def changed(self, keys: list[tuple[str, str]]) -> None:
        self.others.changed(keys)

    def confirmed(self, started_at: float) -> None:
        self.others.confirmed(started_at)

    def unreachable(self, since: float) -> None:
        self.unreachable_calls += 1
        self.others.unreachable(since)

    def reconnected(self) -> None:
        self.reconnects += 1
        self.others.reconnected()

    def lost(self) -> None:
        self.losses += 1
        self.others.lost()


async def values_through_cache(cache: ReadCache, engine: MongoEngine) -> set[bytes]:
    state = await read_through(cache, NAMESPACE, KEY, lambda: engine.get(NAMESPACE, KEY))
    return {v.value for v in state.versions} if state is not None else set()


async def test_a_write_made_while_the_stream_was_cut_reaches_the_cache_when_it_resumes(
    mongo_server: MongoServer, redis: RedisServer
) -> None:
    database = mongo_server.database_name("resume")
    host, port = parse_uri(mongo_server.uri)["nodelist"][0]
    proxy = TcpProxy(f"{host}:{port}")
    await proxy.start()
    # d1 reaches the database only through the proxy; every blocking call of it runs on a thread,
    # since the proxy forwards on this event loop.
    d1 = await asyncio.to_thread(
        MongoEngine, f"mongodb://{proxy.address}/?directConnection=true", database, "d1", REGION
    )
    d2 = MongoEngine(mongo_server.uri, database, "d2", REGION)
    settings = CacheSettings(
        url=redis.url, region=REGION, ttl_s=300, deadline_s=1.0, heartbeat_s=0.05, others_lag_max_s=LAG_MAX_S
    )
    cache = ReadCache(settings, node_id="d1", shared_store=True)
    writer = GroupCommitter(d2, HybridClock().now, batch_records_max=16, queue_records_max=100)
    writer.start()
    cache.start()
    assert cache.others is not None
    heard = Heard(cache.others)
    changes = RegionChanges(d1.mongo, heard, await_s=await_for_bound(LAG_MAX_S))
    changes.start()
    others = cache.others

    async def cache_trusted() -> bool:
        return cache.coherence.usable and others.trusted()

    try:
        await writer.submit(LocalWrite(NAMESPACE, KEY, value=b"v1"))
        await eventually(cache_trusted, 20.0, "the cache ready and the stream confirmed")

        async def v1_cached() -> bool:
            # The first reads may see the write's change as news; then the fill lands.
            return await values_through_cache(cache, d1) == {b"v1"} and isinstance(
                await cache.lookup(NAMESPACE, KEY), Hit
            )

        await eventually(v1_cached, 10.0, "v1 filled into d1's cache")

        proxy.partition()  # d1 loses the database; d2 does not

        async def outage_noticed() -> bool:
            return heard.unreachable_calls > 0

        await eventually(outage_noticed, 20.0, "the stream to notice the outage")
        reconnects, told = heard.reconnects, others.told
        await writer.submit(LocalWrite(NAMESPACE, KEY, value=b"v2"))  # acknowledged meanwhile
        proxy.heal()

        async def resumed() -> bool:
            return heard.reconnects > reconnects and await cache_trusted()

        await eventually(resumed, 20.0, "the stream back and confirmed")

        async def v2_at_d1() -> bool:
            # Asked only while the cache is trusted: a distrusted cache reads the store, which
            # would hide a stale entry.
            return await cache_trusted() and await values_through_cache(cache, d1) == {b"v2"}

        await eventually(
            v2_at_d1, CATCH_UP_S, "d1's cache to answer v2, which d2 acknowledged during the outage"
        )
        # The stream resumed; it was not lost (which would have abandoned the cache instead).
        assert heard.losses == 0
        assert others.told > told
    finally:
        await asyncio.to_thread(changes.close)
        await writer.stop()
        await cache.close_loop_client()
        await asyncio.to_thread(cache.close)
        await asyncio.to_thread(d1.close)
        d2.close()
        await proxy.stop()
