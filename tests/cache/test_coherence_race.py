"""Concurrent local writes, replicated applies and cache reads (with their fills) against a real
redis-server: no read may return a state older than the last one acknowledged before the read
began, nor older than one a read of the store (as a Scan makes, past the cache) returned before
it began. Randomized: the seed is printed; DOMICILE_CACHE_RACE_SEED=N replays the same schedule
(thread timing still varies). The negative controls disable the version guard of the fill, and
the marks made before each commit, and show that the checker then catches a stale read."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from domicile.causality import KeyState, Mutation
from domicile.hlc import HybridClock
from domicile.redis_server import RedisServer
from node.cache.read_cache import CacheSettings, ReadCache
from node.cache.store import RedisStore
from node.engine.base import ApplyOutcome, LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import LogTail
from node.engine.sqlite import SQLiteEngine
from tests.cache.reads import read_through
from tests.support.cache_counters import CountedCache

NAMESPACE = "ns"
KEYS = [f"k{i}" for i in range(4)]
READERS = 3


def seed_of_run() -> int:
    seed = int(os.environ.get("DOMICILE_CACHE_RACE_SEED", random.randrange(2**32)))
    print(f"cache race seed: {seed} (replay: DOMICILE_CACHE_RACE_SEED={seed})")
    return seed


class UnguardedStore(RedisStore):
    """A fill that ignores the lease's version and whether there is a lease at all."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._fill = self.client.register_script(
            "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1"
        )


@dataclass
class Checker:
    """The last acknowledged state of each key, and the reads that returned an older one."""

    acked: dict[str, KeyState] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    reads: int = 0
    tally: CountedCache = field(default_factory=CountedCache)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self, key: str, state: KeyState) -> None:
        """A state acknowledged to a writer, or returned by a read of the store (a floor alike
        for every read that begins after it)."""
        with self.lock:
            held = self.acked.get(key)
            # One writer thread changes a key's state, so its contexts only grow.
            if held is None or held.context.leq(state.context):
                self.acked[key] = state

    def before_read(self, key: str) -> KeyState | None:
        with self.lock:
            return self.acked.get(key)

    def after_read(self, key: str, floor: KeyState | None, got: KeyState | None) -> None:
        with self.lock:
            self.reads += 1
            if floor is not None and (got is None or not floor.context.leq(got.context)):
                self.violations.append(
                    f"read {self.reads} of {key}: got {got.context if got else None}, "
                    f"older than the acknowledged {floor.context}"
                )


class SlowTail(LogTail):
    """A change-log tail that takes its time: the writer thread lingers between a commit and
    telling the cache about it, as a thread kept from the GIL would."""

    def __init__(self, linger_s: float) -> None:
        super().__init__(records_max=1000, bytes_max=1 << 20)
        self.linger_s = linger_s

    def append(self, mutations: Sequence[Mutation]) -> None:
        time.sleep(self.linger_s)
        super().append(mutations)


@dataclass
class Run:
    seed: int
    writes: int
    applies: int
    store_class: type[RedisStore] = RedisStore
    stop_at_first_violation: bool = False
    # Whether the committer marks the keys before each commit (node/cache/coherence.py,
    # `changing`), and how long its writer thread lingers after a commit before telling.
    announce: bool = True
    window_s: float = 0.0


async def race(tmp_path: Path, server: RedisServer, run: Run) -> Checker:
    rng = random.Random(run.seed)
    engine = SQLiteEngine(tmp_path / "node.sqlite3", "n1", "eu-west-1", synchronous="OFF")
    peer = SQLiteEngine(tmp_path / "peer.sqlite3", "n2", "eu-west-1", synchronous="OFF")
    settings = CacheSettings(url=server.url, region="eu-west-1", ttl_s=30, deadline_s=1.0, heartbeat_s=0.05)
    store = run.store_class(server.url, node_id="n1", deadline_s=1.0, ttl_s=30)
    checker = Checker()
    cache = ReadCache(settings, node_id="n1", store=store, counters=checker.tally)
    committer = GroupCommitter(
        engine,
        HybridClock().now,
        batch_records_max=16,
        queue_records_max=1000,
        on_keys_changed=cache.changed,
        on_keys_changing=cache.changing if run.announce else None,
        on_keys_settled=cache.settled if run.announce else None,
        log_tail=SlowTail(run.window_s) if run.window_s else None,
    )
    done = threading.Event()
    readers: list[asyncio.Task[None]] = []
    committer.start()
    cache.start()
    try:
        deadline = time.monotonic() + 10
        while not cache.coherence.usable:
            assert time.monotonic() < deadline, "the cache never became ready"
            await asyncio.sleep(0.01)

        async def reader(n: int) -> None:
            local = random.Random(run.seed * 31 + n)

            def load(key: str) -> Callable[[], KeyState | None]:
                def read() -> KeyState | None:
                    state = engine.get(NAMESPACE, key)
                    # Widens the window between the engine read and the fill.
                    time.sleep(local.random() * 0.002)
                    return state

                return read

            while not done.is_set():
                key = local.choice(KEYS)
                floor = checker.before_read(key)
                got = await read_through(cache, NAMESPACE, key, load(key))
                checker.after_read(key, floor, got)
                if run.stop_at_first_violation and checker.violations:
                    done.set()

        async def scanner() -> None:
            # Reads the store past the cache, on a thread, as a Scan does: what it returns is a
            # floor for every read through the cache that begins after it.
            local = random.Random(run.seed * 37)
            while not done.is_set():
                key = local.choice(KEYS)
                state = await asyncio.to_thread(engine.get, NAMESPACE, key)
                if state is not None:
                    checker.acknowledged(key, state)

        # Each reader looks up on this event loop and reads the engine and fills on a thread.
        readers = [asyncio.create_task(reader(n)) for n in range(READERS)]
        readers.append(asyncio.create_task(scanner()))

        async def writes() -> None:
            for i in range(run.writes):
                key = rng.choice(KEYS)
                committed = await committer.submit(LocalWrite(NAMESPACE, key, value=f"w{i}".encode()))
                checker.acknowledged(key, committed.state)
                await asyncio.sleep(rng.random() * 0.002)
                if done.is_set():
                    return

        async def applies() -> None:
            for i in range(run.applies):
                key = rng.choice(KEYS)
                [made] = peer.commit_local(
                    [LocalWrite(NAMESPACE, key, value=f"r{i}".encode())], HybridClock().now
                )
                assert not isinstance(made, Exception)
                mutation = made.mutation
                seen: dict[str, KeyState | None] = {}

                def apply(e: StorageEngine, m=mutation, seen=seen) -> ApplyOutcome:
                    outcome = e.apply_remote("n2", [m], m.lsn)
                    if run.window_s:
                        time.sleep(run.window_s)  # committed, not told yet: as SlowTail does
                    # The state as of the acknowledgement, read on the writer thread.
                    seen[m.key] = e.get(NAMESPACE, m.key)
                    return outcome

                # As the receiver runs an apply: announcing the keys of its mutations.
                await committer.run(apply, touches=[(NAMESPACE, key)])
                state = seen[mutation.key]
                assert state is not None
                checker.acknowledged(mutation.key, state)
                await asyncio.sleep(rng.random() * 0.004)
                if done.is_set():
                    return

        await asyncio.gather(writes(), applies())
        done.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*readers)
        return checker
    finally:
        done.set()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await committer.stop()
        await cache.close_loop_client()
        await asyncio.to_thread(cache.close)
        engine.close()
        peer.close()


def assert_clean(checker: Checker, reads_min: int) -> None:
    """Enough reads, some of them hits, and none older than its floor."""
    print(f"{checker.reads} reads: {checker.tally.counts}")
    assert checker.reads > reads_min and checker.tally.counts.get("hit", 0) > 0, checker.tally.counts
    assert not checker.violations, "\n".join(checker.violations[:5])


async def test_no_read_returns_a_state_older_than_the_last_acknowledged(
    tmp_path: Path, redis: RedisServer
) -> None:
    assert_clean(await race(tmp_path, redis, Run(seed_of_run(), writes=400, applies=150)), reads_min=200)


async def test_a_read_of_the_store_is_never_followed_by_an_older_cached_read(
    tmp_path: Path, redis: RedisServer
) -> None:
    # The writer thread lingers after each commit, so that reads of the store see commits the
    # cache has not been told of yet; the keys marked before the commit keep them out of it.
    checker = await race(tmp_path, redis, Run(seed_of_run(), writes=300, applies=100, window_s=0.003))
    assert_clean(checker, reads_min=100)


def assert_caught(checker: Checker) -> None:
    """A negative control's end: the checker found a stale read (and says where)."""
    print(f"{checker.reads} reads: {checker.tally.counts}; first violation: {checker.violations[:1]}")
    assert checker.violations, f"no stale read caught in {checker.reads} reads"


async def test_negative_control_told_only_after_the_commit_the_checker_catches_an_older_cached_read(
    tmp_path: Path, redis: RedisServer
) -> None:
    checker = await race(
        tmp_path,
        redis,
        Run(
            seed_of_run(),
            writes=3000,
            applies=1000,
            stop_at_first_violation=True,
            announce=False,
            window_s=0.003,
        ),
    )
    assert_caught(checker)


async def test_negative_control_without_the_version_guard_the_checker_catches_a_stale_read(
    tmp_path: Path, redis: RedisServer
) -> None:
    checker = await race(
        tmp_path,
        redis,
        Run(
            seed_of_run(), writes=3000, applies=1000, store_class=UnguardedStore, stop_at_first_violation=True
        ),
    )
    assert_caught(checker)
