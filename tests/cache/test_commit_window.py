"""A commit is visible in the engine before the writer thread has told the cache about it: a
read of the engine (a scan, a read that does not use the cache) can return the new state in
that window. A read through the cache that follows it must not return the entry of the state
before (node/cache/coherence.py, `changing`). Against a real SQLite store and redis-server.

The window is held open by the change-log tail, which the group committer feeds after the
commit and before it tells the cache: a tail that, on its append, runs a read of the engine and
a lookup through the cache (on the event loop, while the writer thread waits) sees both at the
moment between the two."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from domicile.causality import KeyState, Mutation
from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.read_cache import CacheSettings, Hit, Pending, ReadCache
from node.engine.base import ApplyOutcome, LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import LogTail
from node.engine.sqlite import SQLiteEngine
from tests.cache.reads import read_through
from tests.support.cluster import eventually

NAMESPACE = "ns"
KEY = "k"
PROBE_S = 10.0


@dataclass
class Seen:
    """What the probe saw inside the window: the engine's values, and the cache's answer."""

    engine: set[bytes]
    cache: Hit | Pending


class ProbingTail(LogTail):
    """A change-log tail whose append, when armed, probes the engine and the cache."""

    def __init__(self, engine: SQLiteEngine, cache: ReadCache, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(records_max=1000, bytes_max=1 << 20)
        self.engine, self.cache, self.loop = engine, cache, loop
        self.armed = False
        self.seen: list[Seen] = []

    def append(self, mutations: Sequence[Mutation]) -> None:
        if self.armed:
            self.armed = False
            state = self.engine.get(NAMESPACE, KEY)
            on_engine = {v.value for v in state.versions} if state is not None else set()
            # The writer thread waits here while the event loop looks the key up.
            found = asyncio.run_coroutine_threadsafe(self.cache.lookup(NAMESPACE, KEY), self.loop)
            self.seen.append(Seen(on_engine, found.result(PROBE_S)))
        super().append(mutations)


@dataclass
class Node:
    engine: SQLiteEngine
    cache: ReadCache
    committer: GroupCommitter
    tail: ProbingTail

    async def values(self) -> set[bytes]:
        state: KeyState | None = await read_through(
            self.cache, NAMESPACE, KEY, lambda: self.engine.get(NAMESPACE, KEY)
        )
        return {v.value for v in state.versions} if state is not None else set()


@asynccontextmanager
async def node(tmp_path: Path, redis: RedisServer, *, announce: bool) -> AsyncIterator[Node]:
    """An engine, a read cache and a group committer as the daemon wires them; `announce`
    False leaves out the calls made before a commit (the negative control)."""
    engine = SQLiteEngine(tmp_path / "store.sqlite3", "n1", "eu-west-1", synchronous="OFF")
    settings = CacheSettings(url=redis.url, region="eu-west-1", deadline_s=1.0, heartbeat_s=0.05)
    cache = ReadCache(settings, node_id="n1")
    tail = ProbingTail(engine, cache, asyncio.get_running_loop())
    committer = GroupCommitter(
        engine,
        HybridClock().now,
        batch_records_max=16,
        queue_records_max=100,
        log_tail=tail,
        on_keys_changed=cache.changed,
        on_keys_changing=cache.changing if announce else None,
        on_keys_settled=cache.settled if announce else None,
    )
    committer.start()
    cache.start()
    try:
        yield Node(engine, cache, committer, tail)
    finally:
        await committer.stop()
        await cache.close_loop_client()
        await asyncio.to_thread(cache.close)
        engine.close()


async def v1_cached(n: Node) -> None:
    await n.committer.submit(LocalWrite(NAMESPACE, KEY, value=b"v1"))

    async def v1_hit() -> bool:
        return await n.values() == {b"v1"} and isinstance(await n.cache.lookup(NAMESPACE, KEY), Hit)

    await eventually(v1_hit, 10.0, "v1 filled into the cache")


async def probe_a_write(n: Node) -> Seen:
    await v1_cached(n)
    n.tail.armed = True
    await n.committer.submit(LocalWrite(NAMESPACE, KEY, value=b"v2"))
    [seen] = n.tail.seen
    assert seen.engine == {b"v2"}, "the probe ran after the commit"
    return seen


async def test_a_read_through_the_cache_while_a_commit_is_told_does_not_return_the_state_before(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with node(tmp_path, redis, announce=True) as n:
        seen = await probe_a_write(n)
        assert isinstance(seen.cache, Pending), "the cache answered v1 after the engine gave v2"
        assert await n.values() == {b"v2"}
        # The mark ends with the change's landing: the key is served from the cache again.

        async def v2_hit() -> bool:
            found = await n.cache.lookup(NAMESPACE, KEY)
            if isinstance(found, Hit):
                return found.state is not None and {v.value for v in found.state.versions} == {b"v2"}
            await asyncio.to_thread(found.read, lambda: n.engine.get(NAMESPACE, KEY))
            return False

        await eventually(v2_hit, 10.0, "v2 served from the cache")


async def test_negative_control_without_the_mark_before_the_commit_the_cache_answers_the_state_before(
    tmp_path: Path, redis: RedisServer
) -> None:
    # What the probe catches: told only after the commit, the cache still serves v1 in the window.
    async with node(tmp_path, redis, announce=False) as n:
        seen = await probe_a_write(n)
        assert isinstance(seen.cache, Hit) and seen.cache.state is not None
        assert {v.value for v in seen.cache.state.versions} == {b"v1"}


async def test_a_replicated_apply_is_announced_by_the_keys_it_touches(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with node(tmp_path, redis, announce=True) as n:
        await v1_cached(n)
        peer = SQLiteEngine(tmp_path / "peer.sqlite3", "p1", "eu-west-1", synchronous="OFF")
        try:
            state = await asyncio.to_thread(n.engine.get, NAMESPACE, KEY)
            assert state is not None
            [made] = peer.commit_local(
                [LocalWrite(NAMESPACE, KEY, value=b"v2", supersedes=state.context)], HybridClock().now
            )
            assert not isinstance(made, Exception)
            m = made.mutation
            seen: list[Hit | Pending] = []

            def apply(engine: StorageEngine) -> ApplyOutcome:
                outcome = engine.apply_remote("p1", [m], m.lsn)
                # Inside the job: committed, and not yet told changed.
                loop_lookup = asyncio.run_coroutine_threadsafe(n.cache.lookup(NAMESPACE, KEY), n.tail.loop)
                seen.append(loop_lookup.result(PROBE_S))
                return outcome

            await n.committer.run(apply, touches=[(NAMESPACE, KEY)])
            assert isinstance(seen[0], Pending), "the cache answered v1 while the apply committed"
            assert await n.values() == {b"v2"}
        finally:
            peer.close()
