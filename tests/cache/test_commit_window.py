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
from typing import Any

from domicile.causality import KeyState, Mutation
from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.read_cache import CacheSettings, Hit, Pending, ReadCache
from node.daemon import Node as Node_
from node.engine.base import ApplyOutcome, LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import LogTail
from node.engine.sqlite import SQLiteEngine
from tests.cache.reads import read_through
from tests.cache.test_node_cache import CACHED, counter
from tests.integration.test_policy_reconciliation import loose, tight
from tests.support.cache_counters import CountedCache
from tests.support.cluster import NAMESPACES, LocalCluster, eventually

NAMESPACE = "ns"
KEY = "k"
PROBE_S = 10.0


@dataclass
class Seen:
    """What the probe saw inside the window: the engine's values, whether the cache was in use
    (ready, not suspect: a Pending of a cache out of use says nothing), the cache's answer, and
    what the lookup counted."""

    engine: set[bytes]
    usable: bool
    cache: Hit | Pending
    counted: dict[str, int]


class ProbingTail(LogTail):
    """A change-log tail whose append, when armed, probes the engine and the cache."""

    def __init__(
        self, engine: SQLiteEngine, cache: ReadCache, counted: CountedCache, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(records_max=1000, bytes_max=1 << 20)
        self.engine, self.cache, self.counted, self.loop = engine, cache, counted, loop
        self.armed = False
        self.seen: list[Seen] = []

    def append(self, mutations: Sequence[Mutation]) -> None:
        if self.armed:
            self.armed = False
            state = self.engine.get(NAMESPACE, KEY)
            on_engine = {v.value for v in state.versions} if state is not None else set()
            usable = self.cache.coherence.usable
            before = dict(self.counted.counts)
            # The writer thread waits here while the event loop looks the key up.
            found = asyncio.run_coroutine_threadsafe(self.cache.lookup(NAMESPACE, KEY), self.loop)
            answer = found.result(PROBE_S)
            counted = {
                k: n - before.get(k, 0) for k, n in self.counted.counts.items() if n != before.get(k, 0)
            }
            self.seen.append(Seen(on_engine, usable, answer, counted))
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
    # A generous deadline: a call of a loaded machine past it would leave the cache out of use.
    settings = CacheSettings(url=redis.url, region="eu-west-1", deadline_s=5.0, heartbeat_s=0.05)
    counted = CountedCache()
    cache = ReadCache(settings, node_id="n1", counters=counted)
    tail = ProbingTail(engine, cache, counted, asyncio.get_running_loop())
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
    assert seen.usable, "the cache was out of use (a slow heartbeat): nothing to learn"
    return seen


async def test_a_read_through_the_cache_while_a_commit_is_told_does_not_return_the_state_before(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with node(tmp_path, redis, announce=True) as n:
        seen = await probe_a_write(n)
        assert isinstance(seen.cache, Pending), "the cache answered v1 after the engine gave v2"
        assert seen.counted == {"miss": 1}, "a miss for the marked key, not a fallback"
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
        assert seen.counted == {"hit": 1}


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
                assert n.cache.coherence.usable, "the cache was out of use: nothing to learn"
                loop_lookup = asyncio.run_coroutine_threadsafe(n.cache.lookup(NAMESPACE, KEY), n.tail.loop)
                seen.append(loop_lookup.result(PROBE_S))
                return outcome

            await n.committer.run(apply, touches=[(NAMESPACE, KEY)])
            assert isinstance(seen[0], Pending), "the cache answered v1 while the apply committed"
            assert await n.values() == {b"v2"}
        finally:
            peer.close()


class EngineProbe:
    """Wraps a running node's engine calls so that, right after the engine has committed a
    write or an apply of KEY (before the group committer tells the cache), the cache is asked
    for the key from inside, as in ProbingTail."""

    def __init__(self, node: Node_, namespace: str, key: str) -> None:
        self.node, self.namespace, self.key = node, namespace, key
        self.loop = asyncio.get_running_loop()
        self.seen: list[tuple[bool, Hit | Pending]] = []
        engine = node.engine
        commit_local, apply_remote = engine.commit_local, engine.apply_remote

        def probed_commit(writes: Sequence[LocalWrite], *args: Any, **kw: Any) -> Any:
            done = commit_local(writes, *args, **kw)
            if any((w.namespace, w.key) == (namespace, key) for w in writes):
                self._probe()
            return done

        def probed_apply(source: str, mutations: Sequence[Mutation], *args: Any, **kw: Any) -> Any:
            done = apply_remote(source, mutations, *args, **kw)
            if any((m.namespace, m.key) == (namespace, key) for m in mutations):
                self._probe()
            return done

        engine.commit_local = probed_commit  # type: ignore[method-assign]
        engine.apply_remote = probed_apply  # type: ignore[method-assign]

    def _probe(self) -> None:
        cache = self.node.cache
        assert cache is not None
        found = asyncio.run_coroutine_threadsafe(cache.lookup(self.namespace, self.key), self.loop)
        self.seen.append((cache.coherence.usable, found.result(PROBE_S)))


async def test_a_node_keeps_a_key_out_of_its_cache_while_a_write_or_an_apply_of_it_commits(
    pair: LocalCluster,
) -> None:
    """The daemon's wiring: its local writes and its replicated applies (which announce the keys
    of their mutations) are marked before the engine commits them."""
    node = pair.nodes[CACHED]
    ns, key = "instruments", "SAP"
    await pair.put(CACHED, ns, key, b"v1")

    async def v1_hit() -> bool:
        return (
            await pair.values(CACHED, ns, key) == {b"v1"} and counter(node, "domicile_cache_hits_total") > 0
        )

    await eventually(v1_hit, 10.0, "v1 served from the cache")
    probe = EngineProbe(node, ns, key)
    await pair.put("eu-central-1", ns, key, b"v2")  # reaches this node by a replicated apply

    async def probed() -> bool:
        return bool(probe.seen)

    await eventually(probed, 10.0, "the apply of v2 at the cached node")
    applies = len(probe.seen)  # one, or more where a batch was sent again after a reconnect
    await pair.put(CACHED, ns, key, b"v3")
    assert len(probe.seen) == applies + 1
    for i, (usable, found) in enumerate(probe.seen):
        what = "the local write" if i == applies else "the apply"
        assert usable, f"the cache was out of use during {what}: nothing to learn"
        assert isinstance(found, Pending), f"the cache answered what the key held before {what}"
    assert await pair.values(CACHED, ns, key) == {b"v3"}


async def test_a_remediation_keeps_the_keys_it_withdraws_out_of_the_cache_while_it_commits(
    tmp_path: Path, redis: RedisServer
) -> None:
    """The withdrawal is a job of the group committer that declares the keys it may change."""
    region, ns = "us-east-1", "customers_us"
    us_only = {"name": ns, "regions": [region], "classification": "personal"}
    cluster = LocalCluster(tmp_path, [region], pack=loose(), namespaces=[*NAMESPACES, us_only])
    await cluster.start_coordinator()
    try:
        node = await cluster.start_node(
            region, cache_redis_url=redis.url, cache_redis_region=region, cache_deadline_ms=5000
        )
        cache = node.cache
        assert cache is not None
        await cluster.put(region, ns, "c-1", b"profile", subject_id="s-1", subject_jurisdiction="DE")

        async def cached() -> bool:
            await cluster.values(region, ns, "c-1")
            return isinstance(await cache.lookup(ns, "c-1"), Hit)

        await eventually(cached, 10.0, "c-1 served from the cache")
        await cluster.change_policy(tight())  # no region may hold it now
        seen: list[tuple[bool, Hit | Pending]] = []
        loop = asyncio.get_running_loop()
        withdraw = node.engine.withdraw

        def probed(namespace: str, key: str, dots: Any) -> Any:
            after = withdraw(namespace, key, dots)
            found = asyncio.run_coroutine_threadsafe(cache.lookup(namespace, key), loop)
            seen.append((cache.coherence.usable, found.result(PROBE_S)))
            return after

        node.engine.withdraw = probed  # type: ignore[method-assign]
        receipt = await node.compliance_remediate("", "test", remove_last_copies=True)
        assert receipt.versions_removed == 1
        assert len(seen) == 1
        usable, found = seen[0]
        assert usable, "the cache was out of use: nothing to learn"
        assert isinstance(found, Pending), "the cache answered the withdrawn copy"
    finally:
        await cluster.stop()
