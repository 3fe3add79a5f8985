"""Two daemons of one region over one real MongoDB wire-protocol server (SecantusDB), each with
its read cache in one real redis-server: concurrent writes through both, reads (with fills)
through both. A read that starts at time t must never return a state older than one either
daemon acknowledged before t - lag_max_s (the bound of node/cache/others.py): a daemon learns of
the other's writes from the database's change stream. Randomized: the seed is printed;
DOMICILE_CACHE_RACE_SEED=N replays the same schedule (thread timing still varies). The negative
control runs the second daemon's cache without the change stream and shows that the checker
then catches a read hidden by a stale entry."""

from __future__ import annotations

import asyncio
import bisect
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from domicile.causality import CausalContext, KeyState
from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.read_cache import CacheSettings, ReadCache
from node.engine.base import LocalWrite
from node.engine.group_commit import GroupCommitter
from node.engine.mongo import MongoEngine
from node.engine.mongo_changes import RegionChanges, await_for_bound
from tests.cache.reads import read_through
from tests.cache.test_coherence_race import seed_of_run
from tests.support.cache_counters import CountedCache
from tests.support.mongo import MongoServer

REGION = "eu-west-1"
NAMESPACE = "ns"
KEYS = [f"k{i}" for i in range(4)]
LAG_MAX_S = 0.5
DAEMONS = ("d1", "d2")


@dataclass
class Acks:
    """Per key and daemon, the contexts that daemon acknowledged, with when (monotonic)."""

    at: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    contexts: dict[tuple[str, str], list[CausalContext]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self, daemon: str, key: str, state: KeyState) -> None:
        with self.lock:
            self.at.setdefault((key, daemon), []).append(time.monotonic())
            self.contexts.setdefault((key, daemon), []).append(state.context)

    def floors(self, key: str, started: float) -> list[CausalContext]:
        """What a read of `key` that started then must contain: each daemon's last context
        acknowledged before started - LAG_MAX_S."""
        found = []
        with self.lock:
            for daemon in DAEMONS:
                times = self.at.get((key, daemon), [])
                n = bisect.bisect_right(times, started - LAG_MAX_S)
                if n:
                    found.append(self.contexts[(key, daemon)][n - 1])
        return found

    def check(self, reader: str, key: str, floors: list[CausalContext], got: KeyState | None) -> None:
        with self.lock:
            self.reads += 1
            for floor in floors:
                if got is None or not floor.leq(got.context):
                    self.violations.append(
                        f"read {self.reads} of {key} at {reader}: got {got.context if got else None}, "
                        f"older than the acknowledged {floor}"
                    )


@dataclass
class Daemon:
    name: str
    engine: MongoEngine
    cache: ReadCache
    committer: GroupCommitter
    tally: CountedCache
    changes: RegionChanges | None = None


async def race(
    tmp_path: Path, mongo: MongoServer, server: RedisServer, seed: int, *, watch: bool, writes: int
) -> tuple[Acks, dict[str, Daemon]]:
    rng = random.Random(seed)
    database = mongo.database_name("cache_race")
    daemons: dict[str, Daemon] = {}
    acks = Acks()
    done = threading.Event()
    readers: list[asyncio.Task[None]] = []
    try:
        for name in DAEMONS:
            engine = MongoEngine(mongo.uri, database, name, REGION)
            tally = CountedCache()
            cache = ReadCache(
                CacheSettings(
                    url=server.url, region=REGION, ttl_s=30, deadline_s=1.0, heartbeat_s=0.05,
                    others_lag_max_s=LAG_MAX_S,
                ),
                node_id=name,
                counters=tally,
                shared_store=watch,
            )  # fmt: skip
            committer = GroupCommitter(
                engine, HybridClock().now, batch_records_max=16, queue_records_max=1000,
                on_keys_changed=cache.changed,
            )  # fmt: skip
            daemon = daemons[name] = Daemon(name, engine, cache, committer, tally)
            committer.start()
            cache.start()
            if cache.others is not None:
                daemon.changes = RegionChanges(engine.mongo, cache.others, await_s=await_for_bound(LAG_MAX_S))
                daemon.changes.start()
        deadline = time.monotonic() + 20
        for d in daemons.values():
            while not (d.cache.coherence.usable and (d.cache.others is None or d.cache.others.trusted())):
                assert time.monotonic() < deadline, f"the cache of {d.name} never became ready"
                await asyncio.sleep(0.01)

        async def reader(d: Daemon, n: int) -> None:
            local = random.Random(seed * 31 + n)

            def load(key: str) -> Callable[[], KeyState | None]:
                def read() -> KeyState | None:
                    state = d.engine.get(NAMESPACE, key)
                    time.sleep(local.random() * 0.002)  # widens the window before the fill
                    return state

                return read

            while not done.is_set():
                key = local.choice(KEYS)
                started = time.monotonic()
                floors = acks.floors(key, started)
                got = await read_through(d.cache, NAMESPACE, key, load(key))
                acks.check(d.name, key, floors, got)
                if acks.violations and not watch:
                    done.set()
                await asyncio.sleep(local.random() * 0.002)

        # Each reader looks up on this event loop and reads the store and fills on a thread.
        readers = [
            asyncio.create_task(reader(d, i * 10 + n))
            for i, d in enumerate(daemons.values())
            for n in range(2)
        ]

        async def write(i: int) -> None:
            d = daemons[rng.choice(DAEMONS)]
            key = rng.choice(KEYS)
            committed = await d.committer.submit(LocalWrite(NAMESPACE, key, value=f"{d.name}-{i}".encode()))
            acks.acknowledged(d.name, key, committed.state)

        for i in range(writes):
            await write(i)
            # Pauses longer than the bound now and then, so stale entries would be caught.
            await asyncio.sleep(rng.random() * (0.8 if rng.random() < 0.05 else 0.01))
            if done.is_set():
                break
        await asyncio.sleep(LAG_MAX_S * 2)  # reads after the last write, past the bound
        done.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*readers)
        return acks, daemons
    finally:
        done.set()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for d in daemons.values():
            if d.changes is not None:
                await asyncio.to_thread(d.changes.close)
            await d.committer.stop()
            await d.cache.close_loop_client()
            await asyncio.to_thread(d.cache.close)
            d.engine.close()


async def test_a_write_on_one_daemon_is_never_hidden_at_the_other_past_the_bound(
    tmp_path: Path, mongo_server: MongoServer, redis: RedisServer
) -> None:
    acks, daemons = await race(tmp_path, mongo_server, redis, seed_of_run(), watch=True, writes=150)
    counts = {d.name: d.tally.counts for d in daemons.values()}
    told = {d.name: d.cache.others.told if d.cache.others else 0 for d in daemons.values()}
    print(f"{acks.reads} reads: {counts}; changes told by the stream: {told}")
    assert acks.reads > 200
    assert all(c.get("hit", 0) > 0 for c in counts.values()), counts
    assert all(n > 0 for n in told.values()), told
    assert not acks.violations, "\n".join(acks.violations[:5])


async def test_negative_control_without_the_change_stream_a_stale_entry_hides_a_write(
    tmp_path: Path, mongo_server: MongoServer, redis: RedisServer
) -> None:
    acks, _ = await race(tmp_path, mongo_server, redis, seed_of_run(), watch=False, writes=400)
    print(f"{acks.reads} reads; first violation: {acks.violations[:1]}")
    assert acks.violations, f"no hidden write caught in {acks.reads} reads"
