"""The read cache's figures: a node whose Gets go through the region's Redis (a managed
redis-server child), measured on the SQLite engine; and the hit figure again on a node of the
MongoDB engine (`measure_hits`), whose cache also follows the database's change stream.

- hit: sequential Gets of keys already in the cache, made in turn with echo calls of the same
  run, so that the moments of a shared machine fall on both alike;
- miss: sequential Gets of keys read for the first time (lookup, store read, fill);
- Zipf: reads of keys drawn from a Zipf distribution with a share of Puts to the same keys
  (each Put invalidates its key's entry), once to warm the cache and once measured; the hit
  ratio is the growth of the node's own counters over the measured pass.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench import machine, phases
from bench.client import WARMUP_CALLS, Call, echo_call, get_call, interleaved_ms, put_call, sequential_ms
from bench.cluster import NodeHandle

HIT_KEYS = 1000
# Hits and echo calls are made in turn this many at a time (bench.client.interleaved_ms): some
# 25 ms of each, far shorter than the seconds a burst of the hypervisor's steal lasts.
HIT_BLOCK = 25
ZIPF_KEYS = 2000
ZIPF_EXPONENT = 1.1
ZIPF_WRITE_SHARE = 0.05
MISS_WARMUP = 10
# Passes over the hit keys before giving up on a warm cache (the share figure then says so).
WARM_PASSES_MAX = 10


@dataclass(frozen=True)
class Floor:
    """The floor of a cache hit: a bare echo server (bench/echo_server.py --redis-url) that reads
    one key from the node's Redis before each answer, the GET written from the request's
    deserializer as the node's is. `copy_entry(key)` (blocking) stores the node's cache entry of
    `key` under the floor server's key, so that both read the same bytes; `process` names the
    floor server's process for its CPU figure."""

    channel: grpc.aio.Channel
    copy_entry: Callable[[str], None]
    process: str


@dataclass(frozen=True)
class CacheResult:
    echo_ms: list[float]
    hit_ms: list[float]
    miss_ms: list[float]
    zipf_ops: int
    zipf_hits: float
    zipf_misses: float

    @property
    def zipf_hit_ratio(self) -> float | None:
        total = self.zipf_hits + self.zipf_misses
        return self.zipf_hits / total if total else None


def zipf_picker(n: int, exponent: float, rng: random.Random) -> Callable[[], int]:
    """Index 0 is the most popular of n keys, with weight 1 / (rank ** exponent)."""
    cumulative = list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, n + 1)))
    total = cumulative[-1]
    return lambda: min(n - 1, bisect.bisect_left(cumulative, rng.random() * total))


def counter_total(text: str, name: str) -> float:
    """The sum of a counter's samples over its labels, from a /metrics page."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


@dataclass(frozen=True)
class HitResult:
    echo_ms: list[float]
    hit_ms: list[float]
    # Growth of the node's counters over the measured Gets: hits, and
    # reads the cache did not answer (misses and fallbacks). The figure is of hits if the
    # second is 0.
    hits: float
    not_hits: float
    # CPU microseconds per call of the echo server and of the node, over the calls (None when
    # not asked for, or where /proc is missing).
    echo_cpu_us: float | None = None
    hit_cpu_us: float | None = None
    # What the machine took during the calls (bench.machine).
    machine_share: machine.Share | None = None
    # The floor of a hit, when measured (bench/echo_server.py --redis-url): echo calls that each
    # read the copy of a hit's entry from the same Redis, made in turn with the other two kinds,
    # and that server's CPU per call.
    floor_ms: list[float] | None = None
    floor_cpu_us: float | None = None

    @property
    def hit_share(self) -> float | None:
        total = self.hits + self.not_hits
        return self.hits / total if total else None


async def not_hits_total(node: NodeHandle) -> tuple[float, float]:
    """The node's hits, and its reads the cache did not answer (misses and fallbacks)."""
    text = await node.scrape()
    return counter_total(text, "domicile_cache_hits_total"), counter_total(
        text, "domicile_cache_misses_total"
    ) + counter_total(text, "domicile_cache_fallbacks_total")


async def warm(node: NodeHandle, namespace: str, hit_keys: list[str], engine: str) -> int:
    """Reads every key in turn until one pass is all hits; the passes it took.

    A read of the pre-load can find its key's change not yet deleted in Redis (the invalidator
    runs behind the commit) and then neither uses nor fills the entry; measured, such a key's
    first Get is a miss that reads the store. A few misses among thousands of hits are enough
    to set a p99 (on the MongoDB engine a miss costs several times a hit), so the figure would
    not be one of hits.
    """
    passes = 0
    for passes in range(1, WARM_PASSES_MAX + 1):
        _, missed_before = await not_hits_total(node)
        await sequential_ms(get_call(node.channel, namespace, hit_keys, iter(range(len(hit_keys))).__next__),
                            len(hit_keys), warmup=0)  # fmt: skip
        _, missed_after = await not_hits_total(node)
        if missed_after == missed_before:
            return passes
        phases.progress(
            f"cache ({engine}): {missed_after - missed_before:.0f} reads not answered by the cache; again"
        )
    return passes


async def measure_hits(
    node: NodeHandle,
    echo_channel: grpc.aio.Channel,
    namespace: str,
    value: bytes,
    samples: int,
    rng: random.Random,
    engine: str,
    keys: int = HIT_KEYS,
    cpu: Callable[[], dict[str, float]] | None = None,
    processes: tuple[str, str] = ("echo", ""),
    block: int = HIT_BLOCK,
    floor: Floor | None = None,
) -> HitResult:
    """Echo and cache-hit latencies (ms), the two calls made in turn, `block` of a kind at a time
    (bench.client.interleaved_ms), over `keys` keys. With `cpu` (a snapshot of CPU seconds by
    process name), also the CPU per call of `processes` (the echo server's, the node's) over the
    same calls: each process is idle while the other's calls run, and the node's idle work
    meanwhile (heartbeats, its loops' timers, about 0.02 cores) counts against its Gets. With
    `floor`, calls to the floor server are made in turn with both (see Floor)."""
    hit_keys = [f"hit-{i}" for i in range(keys)]
    phases.progress(f"cache ({engine}): pre-loading {keys} keys and reading each once (fills)")
    await phases.preload(put_call(node.channel, namespace, "hit", value), keys)
    await phases.preload(get_call(node.channel, namespace, hit_keys, iter(range(keys)).__next__), keys)
    await warm(node, namespace, hit_keys, engine)
    echo: Call = echo_call(echo_channel, namespace, "echo", value)
    hit: Call = get_call(node.channel, namespace, hit_keys, lambda: rng.randrange(keys))
    calls = [echo, hit]
    if floor is not None:
        await asyncio.to_thread(floor.copy_entry, hit_keys[0])
        calls.append(echo_call(floor.channel, namespace, "floor", value))
    kinds = "echo calls and calls to the hit's floor" if floor is not None else "echo calls"
    phases.progress(
        f"cache ({engine}): Gets, cache hits, and {kinds} in turn, {block} of a kind at a time: "
        f"{samples} of each"
    )
    # The warm-up first: the counters, CPU and machine windows hold the measured calls alone.
    await interleaved_ms(calls, 0, rng, warmup=min(WARMUP_CALLS, samples))
    before = await node.scrape()
    started = cpu() if cpu is not None else {}
    at = machine.sample()
    echo_ms, hit_ms, *floor_ms = await interleaved_ms(calls, samples, rng, warmup=0, block=block)
    during = machine.between(at, machine.sample())
    ended = cpu() if cpu is not None else {}
    after = await node.scrape()

    def grown(name: str) -> float:
        return counter_total(after, name) - counter_total(before, name)

    def cpu_us(name: str) -> float | None:
        if name not in started or name not in ended:
            return None
        return (ended[name] - started[name]) / samples * 1e6

    hits = grown("domicile_cache_hits_total")
    not_hits = grown("domicile_cache_misses_total") + grown("domicile_cache_fallbacks_total")
    return HitResult(
        echo_ms,
        hit_ms,
        hits,
        not_hits,
        cpu_us(processes[0]),
        cpu_us(processes[1]),
        during,
        floor_ms[0] if floor_ms else None,
        cpu_us(floor.process) if floor is not None else None,
    )


async def measure(
    node: NodeHandle, echo_channel: grpc.aio.Channel, namespace: str, value: bytes, samples: int, seed: int
) -> CacheResult:
    rng = random.Random(seed)
    # No more keys than the calls measured ask for (a short run stays short); a full run
    # (samples >= 1000) reads over HIT_KEYS and ZIPF_KEYS keys.
    hit = await measure_hits(
        node, echo_channel, namespace, value, samples, rng, "SQLite", keys=min(HIT_KEYS, max(10, samples))
    )
    echo_ms, hit_ms = hit.echo_ms, hit.hit_ms

    misses = max(MISS_WARMUP + 1, min(samples, 5000))
    miss_keys = [f"miss-{i}" for i in range(misses)]
    phases.progress(f"cache: pre-loading {misses} keys never read")
    await phases.preload(put_call(node.channel, namespace, "miss", value), misses)
    fresh = iter(range(misses))
    phases.progress(f"cache: Get, a miss (each key read once): {misses} sequential calls")
    miss_ms = await sequential_ms(
        get_call(node.channel, namespace, miss_keys, fresh.__next__), misses - MISS_WARMUP, warmup=MISS_WARMUP
    )

    zipf_count = min(ZIPF_KEYS, max(100, 2 * samples))
    zipf_keys = [f"zipf-{i}" for i in range(zipf_count)]
    phases.progress(f"cache: pre-loading {zipf_count} keys for the Zipf load")
    await phases.preload(put_call(node.channel, namespace, "zipf", value), zipf_count)
    pick = zipf_picker(zipf_count, ZIPF_EXPONENT, rng)
    read = get_call(node.channel, namespace, zipf_keys, pick)
    write_key = put_call(node.channel, namespace, "zipf", value)

    async def op(i: int) -> object:
        if rng.random() < ZIPF_WRITE_SHARE:
            return await write_key(pick())
        return await read(i)

    ops = max(100, samples)
    # The same load once unmeasured first: the ratio is of a warm cache, not of its filling.
    phases.progress(f"cache: Zipf load, warming up: {ops} calls")
    await sequential_ms(op, ops, warmup=0)
    before = await node.scrape()
    phases.progress(f"cache: Zipf load (s={ZIPF_EXPONENT}, {ZIPF_WRITE_SHARE:.0%} Puts): {ops} calls")
    await sequential_ms(op, ops, warmup=0)
    after = await node.scrape()
    hits = counter_total(after, "domicile_cache_hits_total") - counter_total(
        before, "domicile_cache_hits_total"
    )
    missed = counter_total(after, "domicile_cache_misses_total") - counter_total(
        before, "domicile_cache_misses_total"
    )
    return CacheResult(echo_ms, hit_ms, miss_ms, ops, hits, missed)
