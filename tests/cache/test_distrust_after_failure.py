"""A read that fails makes the cache suspect (node/cache/coherence.py, point 6) until a heartbeat
taken after the failure lands: against a real redis-server and the real invalidator thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import redis

from domicile.causality import CausalContext, Dot, KeyState, Version, sha256
from node.cache.coherence import Key
from node.cache.read_cache import CacheSettings, Hit, Pending, ReadCache
from tests.support.cache_counters import CountedCache
from tests.support.cluster import eventually
from tests.support.redis import paused, redis_server


def state_of(value: bytes, counter: int) -> KeyState:
    v = Version(Dot("n1", counter), value, hlc=counter, checksum=sha256(value))
    return KeyState((v,), CausalContext.of({"n1": counter}, ()))


async def test_a_heartbeat_that_ran_before_a_failed_lookup_does_not_end_the_distrust(
    tmp_path: Path,
) -> None:
    """Regression: a heartbeat whose script ran in Redis before a lookup failed, and whose outcome
    the invalidator thread noted only after it, ended the distrust on the strength of a check made
    before the failure, so a Redis that came back from an old snapshot was used again and served
    a state older than one this node acknowledged. The next heartbeat is held back here, so that
    only the one taken before the failure can land in the window."""
    with redis_server(tmp_path / "redis") as server:
        counted = CountedCache()
        settings = CacheSettings(url=server.url, region="eu-west-1", deadline_s=0.3, heartbeat_s=0.05)
        cache = ReadCache(settings, node_id="n1", counters=counted)
        invalidate = cache.store.invalidate
        armed, ran, release = threading.Event(), threading.Event(), threading.Event()
        hold_next, let_next = threading.Event(), threading.Event()

        def gated(generation: str, keys: list[Key], seq: int) -> int | None:
            if hold_next.is_set():
                let_next.wait(10.0)  # the next heartbeat: held before it reaches Redis
            found = invalidate(generation, keys, seq)
            if armed.is_set():
                armed.clear()
                ran.set()  # this heartbeat's script ran in Redis (and found nothing lost)
                release.wait(10.0)  # ... and the thread notes its outcome only later
                hold_next.set()
            return found

        cache.store.invalidate = gated  # type: ignore[method-assign]
        cache.start()
        plain = redis.Redis.from_url(server.url)
        try:

            async def usable() -> bool:
                return cache.coherence.usable

            await eventually(usable, 10.0, "the cache ready")
            old, new = state_of(b"old", 1), state_of(b"new", 2)
            # The key holds `old`, cached.
            pending = await cache.lookup("ns", "k")
            assert isinstance(pending, Pending)
            await asyncio.to_thread(pending.read, lambda: old)
            assert isinstance(await cache.lookup("ns", "k"), Hit)
            generation = cache.coherence.generation
            entry_key, hw_key = cache.store.entry_key(generation, "ns", "k"), cache.store.hw_key(generation)
            snapshot_entry, snapshot_hw = plain.dump(entry_key), plain.dump(hw_key)
            assert isinstance(snapshot_entry, bytes) and isinstance(snapshot_hw, bytes)
            # It changes to `new` (acknowledged once told), the change lands, `new` is cached.
            cache.changed([("ns", "k")])

            async def landed() -> bool:
                return cache.coherence.dirty_count == 0

            await eventually(landed, 10.0, "the change landed")
            pending = await cache.lookup("ns", "k")
            assert isinstance(pending, Pending)
            await asyncio.to_thread(pending.read, lambda: new)
            hit = await cache.lookup("ns", "k")
            assert isinstance(hit, Hit) and hit.state == new

            # A heartbeat runs in Redis; its outcome is not noted yet.
            armed.set()
            assert await asyncio.to_thread(ran.wait, 10.0)
            # Redis stops answering: a lookup fails at its deadline, and the cache distrusts it.
            with paused(server):
                assert isinstance(await cache.lookup("ns", "k"), Pending)
            assert counted.counts.get("fallback:timeout") == 1
            assert not cache.coherence.usable
            # Redis comes back as it was before the change (a restart from an old snapshot).
            plain.restore(entry_key, 0, snapshot_entry, replace=True)
            plain.restore(hw_key, 0, snapshot_hw, replace=True)
            # The invalidator notes the heartbeat that ran before the failure.
            release.set()
            await asyncio.sleep(0.3)
            found = await cache.lookup("ns", "k")
            served = found.state if isinstance(found, Hit) else None
            assert served != old, (
                f"usable={cache.coherence.usable}: the cache served the state from before the "
                "acknowledged change, from a Redis that lost writes after a failed lookup"
            )
        finally:
            release.set()
            let_next.set()
            plain.close()
            await cache.close_loop_client()
            cache.close()
