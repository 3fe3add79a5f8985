"""What a lookup takes from its read-ahead (node/cache/read_cache.py), against a real
redis-server: the checks made when the GET was sent, at the start of the read, and nothing
that happened since. A commit of the key begun after the GET was sent keeps its entry
from being served; a generation given up since drops the GET; and the other writers' news,
recent enough when the read started, stays good for that read even once it is older than the
bound (the bound is counted from a read's start, node/cache/others.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.causality import KeyState
from domicile.redis_server import RedisServer
from node.cache.coherence import Key
from node.cache.read_cache import CacheSettings, Hit, Pending, ReadCache
from tests.support.cache_counters import CountedCache
from tests.support.cluster import eventually
from tests.support.redis import redis_server

LAG_S = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as s:
        yield s


async def started(server: RedisServer, *, shared: bool) -> tuple[ReadCache, CountedCache, Clock]:
    counted, clock = CountedCache(), Clock()
    settings = CacheSettings(
        url=server.url, region="eu-west-1", deadline_s=1.0, heartbeat_s=0.05, others_lag_max_s=LAG_S
    )
    cache = ReadCache(settings, node_id="n1", counters=counted, shared_store=shared)
    if cache.others is not None:
        cache.others._clock = clock
        cache.others.confirmed(clock.now)
    cache.start()

    async def usable() -> bool:
        return cache.coherence.usable

    await eventually(usable, 10.0, "the cache ready")
    return cache, counted, clock


async def filled(cache: ReadCache, key: str, state: KeyState | None) -> None:
    """Reads `key` once through the cache (a miss that fills it with `state`), then once more so
    that the loop client's connection is up (a read-ahead is sent only over one)."""
    pending = await cache.lookup("ns", key)
    assert isinstance(pending, Pending)
    pending.read(lambda: state)
    assert isinstance(await cache.lookup("ns", key), Hit)


async def stop(cache: ReadCache) -> None:
    await cache.close_loop_client()
    cache.close()


async def test_a_change_committed_after_the_get_was_sent_is_not_hidden(server: RedisServer) -> None:
    cache, counted, _ = await started(server, shared=False)
    try:
        await filled(cache, "k", None)
        ahead = cache.read_ahead("ns", "k")
        assert ahead is not None
        # A commit of the key begins (the writer thread marks it first). Marked by `changed`
        # alone, the invalidation could land before the reply is checked, and the entry would
        # then be served, rightly: the read began before the change. The commit's mark is
        # ended by no landing, so this checks the rule itself, whatever the timing.
        cache.changing([("ns", "k")])
        found = await cache.lookup("ns", "k", ahead)
        assert isinstance(found, Pending), "the entry read before the change must not be served"
        assert counted.counts.get("miss", 0) == 2  # the fill's miss, and this one
        cache.changed([("ns", "k")])
        cache.settled([("ns", "k")])
    finally:
        await stop(cache)


async def test_a_change_numbered_after_the_get_was_sent_is_not_hidden_before_it_lands(
    server: RedisServer,
) -> None:
    cache, counted, _ = await started(server, shared=False)
    # The invalidator's scripts for changes wait at this gate before they reach Redis
    # (heartbeats pass): the entry stays in Redis and the change dirty, whatever the timing,
    # until the test lets it through.
    gate = threading.Event()
    invalidate = cache.store.invalidate

    def held(generation: str, keys: list[Key], seq: int) -> int | None:
        if keys:
            gate.wait(10.0)
        return invalidate(generation, keys, seq)

    cache.store.invalidate = held  # type: ignore[method-assign]
    try:
        await filled(cache, "k", None)
        ahead = cache.read_ahead("ns", "k")
        assert ahead is not None
        cache.changed([("ns", "k")])  # numbered now; its invalidation is held
        found = await cache.lookup("ns", "k", ahead)
        assert isinstance(found, Pending), "the entry read before the change must not be served"
        assert counted.counts.get("miss", 0) == 2
    finally:
        gate.set()
        await stop(cache)


async def test_a_generation_given_up_after_the_get_was_sent_drops_it(server: RedisServer) -> None:
    cache, counted, _ = await started(server, shared=False)
    try:
        await filled(cache, "k", None)
        ahead = cache.read_ahead("ns", "k")
        assert ahead is not None
        cache.coherence.abandon()
        found = await cache.lookup("ns", "k", ahead)
        assert isinstance(found, Pending)
        assert counted.counts.get("fallback:unavailable") == 1
        assert ahead.sent.reply().cancelled()  # dropped unseen
    finally:
        await stop(cache)


async def test_the_other_writers_bound_is_counted_from_the_read_start(server: RedisServer) -> None:
    cache, counted, clock = await started(server, shared=True)
    try:
        await filled(cache, "k", None)
        ahead = cache.read_ahead("ns", "k")
        assert ahead is not None  # news of the other writers recent enough at the read's start
        clock.now += 2 * LAG_S  # and older than the bound by the time the reply is taken
        assert isinstance(await cache.lookup("ns", "k", ahead), Hit)
        # A read that starts now does not use the cache.
        assert cache.read_ahead("ns", "k") is None
        assert isinstance(await cache.lookup("ns", "k"), Pending)
        assert counted.counts.get("fallback:others_behind") == 1
    finally:
        await stop(cache)
