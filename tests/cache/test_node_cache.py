"""The regional read cache in a running node, against a real redis-server: what it holds
(sealed states only), how writes, replicated applies, erasure, retention and its TTL remove
entries, and how a node reads through a Redis that is down or slow."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from domicile.causality import CausalContext, KeyState
from domicile.errors import FailedPrecondition, InvalidArgument
from domicile.redis_server import RedisServer
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.records import key_state_from_bytes, key_state_to_bytes
from node.cache.read_cache import (
    DECODED_ENTRIES_MAX,
    DECODED_ENTRY_BYTES_MAX,
    LOOP_DECODE_BYTES_MAX,
    CacheSettings,
    ReadCache,
)
from node.config import NodeConfig, redis_url_for_logs
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack
from tests.support.redis import paused

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
    {"name": "sessions", "regions": "global", "classification": "personal", "retention_class": "cache"},
    {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
]
EU = ["eu-west-1", "eu-central-1"]
CACHED = "eu-west-1"
DAY_MS = 86_400_000


# Generous: a shared test machine can stall a call past the production default (50 ms), which
# would make a read fall back where a test expects a hit. The slow-Redis test pays it once.
DEADLINE_MS = 1000


def cache_settings(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {
        "cache_redis_url": server.url,
        "cache_redis_region": CACHED,
        "cache_deadline_ms": DEADLINE_MS,
        **extra,
    }


async def start_pair(root: Path, server: RedisServer, **cache: Any) -> LocalCluster:
    cluster = LocalCluster(root, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_coordinator()
    try:
        await cluster.start_node(CACHED, **cache_settings(server, **cache))
        await cluster.start_node("eu-central-1")
        await cluster.wait_linked()
    except BaseException:
        await cluster.stop()
        raise
    return cluster


async def cache_ready(node: Node) -> None:
    async def ready() -> bool:
        return node.cache is not None and node.cache.coherence.usable

    await eventually(ready, 10.0, "the cache ready")


def counter(node: Node, name: str, **labels: str) -> float:
    value = node.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def entries(server: RedisServer, node_id: str = CACHED) -> dict[bytes, bytes]:
    """Every full or absent entry the node has in Redis, by Redis key."""
    client = redis.Redis.from_url(server.url)
    try:
        found = {}
        for name in client.scan_iter(match=f"domicile:{node_id}:*:e:*".encode()):
            value = client.get(name)
            if isinstance(value, bytes) and value[:1] in (b"f", b"a"):
                found[name] = value
        return found
    finally:
        client.close()


def entry_for(server: RedisServer, namespace: str, key: str) -> bytes | None:
    suffix = f":e:{namespace}:{key}".encode()
    return next((v for k, v in entries(server).items() if k.endswith(suffix)), None)


async def settled(node: Node) -> None:
    """Until every change this node acknowledged has reached Redis: until then a read of a
    changed key goes to the store without filling (so a test expecting a fill or a hit waits)."""

    async def landed() -> bool:
        return node.cache is not None and node.cache.coherence.dirty_count == 0

    await eventually(landed, 10.0, "the cache's invalidations landed")


async def put(cluster: LocalCluster, region: str, namespace: str, key: str, value: bytes, **kw: Any) -> None:
    """A record about a data subject in DE, except in the public namespace."""
    if namespace != "instruments":
        kw = {"subject_id": kw.pop("subject", "s-1"), "subject_jurisdiction": "DE", **kw}
    await cluster.put(region, namespace, key, value, **kw)
    if region == CACHED:
        await settled(cluster.nodes[CACHED])


async def values(cluster: LocalCluster, namespace: str, key: str) -> set[bytes]:
    return await cluster.values(CACHED, namespace, key)


async def test_a_second_get_is_a_hit_and_the_entry_holds_only_the_sealed_state(
    pair: LocalCluster, redis: RedisServer
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "customers", "anna", b"Anna Schmidt, Berlin")
    assert await values(pair, "customers", "anna") == {b"Anna Schmidt, Berlin"}
    assert counter(node, "domicile_cache_hits_total") == 0
    assert await values(pair, "customers", "anna") == {b"Anna Schmidt, Berlin"}
    assert counter(node, "domicile_cache_hits_total") == 1
    blob = entry_for(redis, "customers", "anna")
    assert blob is not None and blob.startswith(b"f")
    # What the engine stores, sealed: the plaintext is nowhere in Redis.
    assert key_state_from_bytes(blob[1:]) == node.engine.get("customers", "anna")
    assert all(b"Anna Schmidt" not in v for v in entries(redis).values())
    # A key never written is cached as such.
    for _ in range(2):
        assert (await pair.get(CACHED, "customers", "nobody")).versions == []
    assert counter(node, "domicile_cache_hits_total") == 2


async def test_local_writes_and_replicated_applies_replace_what_the_cache_answers(
    pair: LocalCluster,
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "instruments", "SAP", b"v1")
    assert await values(pair, "instruments", "SAP") == {b"v1"}
    assert await values(pair, "instruments", "SAP") == {b"v1"}  # a hit
    await put(pair, CACHED, "instruments", "SAP", b"v2")
    assert await values(pair, "instruments", "SAP") == {b"v2"}
    # A write at the other node reaches this one by a replicated apply.
    await put(pair, "eu-central-1", "instruments", "SAP", b"v3")

    async def applied() -> bool:
        state = node.engine.get("instruments", "SAP")
        return state is not None and any(v.value == b"v3" for v in state.live())

    await eventually(applied, 10.0, "the replicated write at eu-west-1")
    await settled(node)
    assert await values(pair, "instruments", "SAP") == {b"v3"}
    hits = counter(node, "domicile_cache_hits_total")
    assert await values(pair, "instruments", "SAP") == {b"v3"}
    assert counter(node, "domicile_cache_hits_total") == hits + 1


async def test_an_erasure_purges_the_subjects_entries(pair: LocalCluster, redis: RedisServer) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "customers", "anna", b"Anna", subject="s-anna")
    await put(pair, CACHED, "sessions", "anna-web", b"token", subject="s-anna")
    await put(pair, CACHED, "customers", "bob", b"Bob", subject="s-bob")
    for key, ns in (("anna", "customers"), ("anna-web", "sessions"), ("bob", "customers")):
        await values(pair, ns, key)
    assert entry_for(redis, "customers", "anna") and entry_for(redis, "sessions", "anna-web")
    coordinator = cpb_grpc.CoordinatorServiceStub(pair.coordinator_channel())
    await coordinator.EraseSubject(
        cpb.EraseSubjectRequest(subject_id="s-anna", reason="Art. 17", subject_jurisdiction="DE"), timeout=5
    )

    async def erased() -> bool:
        return bool(node.eraser.erased_by("s-anna")) and node.eraser.completed_total >= 1

    await eventually(erased, 15.0, "the erasure at eu-west-1")

    async def purged() -> bool:
        return (
            entry_for(redis, "customers", "anna") is None and entry_for(redis, "sessions", "anna-web") is None
        )

    await eventually(purged, 5.0, "the subject's entries gone from Redis")
    assert entry_for(redis, "customers", "bob") is not None
    assert await values(pair, "customers", "anna") == set()
    assert await values(pair, "customers", "bob") == {b"Bob"}


async def test_retention_expiry_removes_entries(pair: LocalCluster, redis: RedisServer) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "sessions", "web-1", b"token")
    await values(pair, "sessions", "web-1")
    assert entry_for(redis, "sessions", "web-1") is not None
    report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
    assert dict(report.expired) == {"sessions": 1}

    async def removed() -> bool:
        return entry_for(redis, "sessions", "web-1") is None

    await eventually(removed, 5.0, "the expired record's entry gone")
    assert await values(pair, "sessions", "web-1") == set()


async def test_entries_live_no_longer_than_the_ttl(tmp_path: Path, redis: RedisServer) -> None:
    cluster = await start_pair(tmp_path, redis, cache_ttl_s=0.3)
    try:
        node = cluster.nodes[CACHED]
        await cache_ready(node)
        await put(cluster, CACHED, "instruments", "SAP", b"v1")
        await values(cluster, "instruments", "SAP")
        assert entry_for(redis, "instruments", "SAP") is not None

        async def expired() -> bool:
            return entry_for(redis, "instruments", "SAP") is None

        await eventually(expired, 5.0, "the entry gone after its TTL")
        misses = counter(node, "domicile_cache_misses_total")
        assert await values(cluster, "instruments", "SAP") == {b"v1"}
        assert counter(node, "domicile_cache_misses_total") == misses + 1
    finally:
        await cluster.stop()


async def test_reads_fall_back_to_the_store_while_redis_is_slow(
    pair: LocalCluster, redis: RedisServer
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "instruments", "SAP", b"v1")
    await values(pair, "instruments", "SAP")
    with paused(redis):
        for _ in range(5):
            assert await values(pair, "instruments", "SAP") == {b"v1"}
        # A write while Redis is away is still read back.
        await put(pair, CACHED, "instruments", "SAP", b"v2")
        assert await values(pair, "instruments", "SAP") == {b"v2"}
    assert counter(node, "domicile_cache_fallbacks_total", reason="timeout") >= 1
    await cache_ready(node)
    assert await values(pair, "instruments", "SAP") == {b"v2"}
    hits = counter(node, "domicile_cache_hits_total")
    assert await values(pair, "instruments", "SAP") == {b"v2"}
    assert counter(node, "domicile_cache_hits_total") == hits + 1


async def test_reads_fall_back_to_the_store_while_redis_is_down_and_use_it_again_after(
    tmp_path: Path, redis: RedisServer
) -> None:
    cluster = await start_pair(tmp_path, redis)
    node = cluster.nodes[CACHED]
    restarted = RedisServer(tmp_path / "redis-again", port=redis.port)
    try:
        await cache_ready(node)
        await put(cluster, CACHED, "instruments", "SAP", b"v1")
        await values(cluster, "instruments", "SAP")
        redis.stop()
        for _ in range(3):
            assert await values(cluster, "instruments", "SAP") == {b"v1"}
        await put(cluster, CACHED, "instruments", "SAP", b"v2")
        assert await values(cluster, "instruments", "SAP") == {b"v2"}
        assert (
            counter(node, "domicile_cache_fallbacks_total", reason="error")
            + counter(node, "domicile_cache_fallbacks_total", reason="unavailable")
            >= 3
        )
        await asyncio.to_thread(restarted.start)
        await cache_ready(node)
        assert await values(cluster, "instruments", "SAP") == {b"v2"}
        hits = counter(node, "domicile_cache_hits_total")
        assert await values(cluster, "instruments", "SAP") == {b"v2"}
        assert counter(node, "domicile_cache_hits_total") == hits + 1
    finally:
        await cluster.stop()
        restarted.stop()


def test_a_cache_in_another_region_is_refused_by_the_config() -> None:
    with pytest.raises(InvalidArgument, match="cache-in-region") as refused:
        NodeConfig(region="eu-west-1", insecure=True, cache_redis_url="redis://127.0.0.1:6379/0",
                   cache_redis_region="us-east-1")  # fmt: skip
    assert "us-east-1" in refused.value.message and "eu-west-1" in refused.value.message
    with pytest.raises(InvalidArgument, match="cache_redis_region is required"):
        NodeConfig(region="eu-west-1", insecure=True, cache_redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(InvalidArgument, match="plaintext to another host"):
        NodeConfig(region="eu-west-1", cache_redis_url="redis://10.0.0.5:6379/0",
                   cache_redis_region="eu-west-1", tls_dir="/nonexistent")  # fmt: skip


def test_finding_a_redis_password_is_not_repeated_in_messages() -> None:
    with pytest.raises(InvalidArgument) as refused:
        NodeConfig(region="eu-west-1", cache_redis_url="redis://:s3cret@10.0.0.5:6379/0",
                   cache_redis_region="eu-west-1", tls_dir="/nonexistent")  # fmt: skip
    assert "s3cret" not in refused.value.message and "***" in refused.value.message
    assert redis_url_for_logs("rediss://app:pw@r.internal:6380/1") == "rediss://app:***@r.internal:6380/1"
    assert redis_url_for_logs("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_a_redis_another_region_claimed_is_refused_at_start(tmp_path: Path, redis: RedisServer) -> None:
    client = redis_client(redis)
    client.set(b"domicile:region", b"us-east-1")
    client.close()
    cluster = LocalCluster(tmp_path, EU, namespaces=NAMESPACES)
    await cluster.start_coordinator()
    try:
        with pytest.raises(FailedPrecondition, match="cache-in-region"):
            await cluster.start_node(CACHED, **cache_settings(redis))
    finally:
        await cluster.stop()


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


async def test_get_answers_are_the_same_with_and_without_the_cache(pair: LocalCluster) -> None:
    """Redaction, contexts and versions: a hit answers exactly what the store answers."""
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "customers", "c-1", b"Carla")
    first = await pair.get(CACHED, "customers", "c-1")
    second = await pair.get(CACHED, "customers", "c-1")
    assert counter(node, "domicile_cache_hits_total") >= 1
    assert isinstance(first, spb.GetResponse)
    assert list(first.versions) == list(second.versions) and first.context == second.context


async def test_a_redis_that_comes_back_from_an_old_snapshot_is_not_trusted(
    pair: LocalCluster, redis: RedisServer
) -> None:
    """Redis restored to before an invalidation (a restart from a snapshot, a failover to a
    replica behind): its old entry would be served. The next heartbeat finds the mark of the
    last change lower than this node landed, and the cache moves to a new generation."""
    node = pair.nodes[CACHED]
    client = redis_client(redis)
    try:
        await put(pair, CACHED, "instruments", "SAP", b"v1")
        await values(pair, "instruments", "SAP")
        [entry_key] = [k for k in client.scan_iter(match=b"domicile:eu-west-1:*:e:instruments:SAP")]
        [hw_key] = list(client.scan_iter(match=b"domicile:eu-west-1:*:hw"))
        old_entry, old_hw = client.dump(entry_key), client.dump(hw_key)
        await put(pair, CACHED, "instruments", "SAP", b"v2")

        async def invalidated() -> bool:
            return client.exists(entry_key) == 0

        await eventually(invalidated, 5.0, "the entry invalidated")
        client.restore(entry_key, 0, old_entry, replace=True)
        client.restore(hw_key, 0, old_hw, replace=True)

        async def reset() -> bool:
            return counter(node, "domicile_cache_resets_total", reason="redis_lost_writes") >= 1

        await eventually(reset, 5.0, "the cache distrusting the restored Redis")
        await cache_ready(node)
        for _ in range(2):
            assert await values(pair, "instruments", "SAP") == {b"v2"}
    finally:
        client.close()


@contextlib.asynccontextmanager
async def offload_held(node: Node) -> AsyncIterator[None]:
    """Every offload thread of the node busy until the block ends: a read that needs one waits."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(10.0)

    holders = [asyncio.create_task(node.offload.run(hold)) for _ in range(node.offload.threads)]
    try:
        for _ in holders:
            assert await asyncio.to_thread(started.acquire, True, 10.0), "an offload thread never started"
        yield
    finally:
        release.set()
        await asyncio.gather(*holders)


async def test_a_hit_of_a_record_without_a_subject_is_answered_on_the_event_loop(
    pair: LocalCluster,
) -> None:
    """No thread is needed for it; a hit of a sealed record still opens on an offload thread."""
    node = pair.nodes[CACHED]
    assert node.offload.threads > 0
    await put(pair, CACHED, "instruments", "ibm", b"IBM 191.2")
    await put(pair, CACHED, "customers", "c-2", b"Dora")
    first = await pair.get(CACHED, "instruments", "ibm")
    await pair.get(CACHED, "customers", "c-2")
    hits = counter(node, "domicile_cache_hits_total")
    async with offload_held(node):
        second = await pair.get(CACHED, "instruments", "ibm")
        assert counter(node, "domicile_cache_hits_total") == hits + 1
        assert list(first.versions) == list(second.versions) and first.context == second.context
        # Negative control: the sealed record's hit needs a thread, so it cannot finish meanwhile.
        sealed = asyncio.create_task(pair.values(CACHED, "customers", "c-2"))
        await asyncio.sleep(0.3)
        assert not sealed.done()
    assert await sealed == {b"Dora"}
    assert counter(node, "domicile_cache_hits_total") == hits + 2


async def test_an_entry_too_large_to_decode_on_the_loop_is_a_hit_decoded_on_a_thread(
    pair: LocalCluster,
) -> None:
    node = pair.nodes[CACHED]
    value = b"q" * (LOOP_DECODE_BYTES_MAX + 1)
    await put(pair, CACHED, "instruments", "big", value)
    assert await pair.values(CACHED, "instruments", "big") == {value}
    hits = counter(node, "domicile_cache_hits_total")
    async with offload_held(node):
        read = asyncio.create_task(pair.values(CACHED, "instruments", "big"))
        await asyncio.sleep(0.3)
        assert not read.done()
    assert await read == {value}
    assert counter(node, "domicile_cache_hits_total") == hits + 1


async def test_a_damaged_entry_is_dropped_and_the_store_answers(
    pair: LocalCluster, redis: RedisServer
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "instruments", "sap", b"SAP 230.5")
    assert await pair.values(CACHED, "instruments", "sap") == {b"SAP 230.5"}
    [(name, blob)] = [(k, v) for k, v in entries(redis).items() if k.endswith(b":e:instruments:sap")]
    client = redis_client(redis)
    try:
        client.set(name, b"f" + b"\xff not a key state")
        assert await pair.values(CACHED, "instruments", "sap") == {b"SAP 230.5"}
        assert counter(node, "domicile_cache_fallbacks_total", reason="corrupt") == 1
        assert client.get(name) is None
        # The next read fills the entry again, and the one after is a hit.
        hits = counter(node, "domicile_cache_hits_total")
        for _ in range(2):
            assert await pair.values(CACHED, "instruments", "sap") == {b"SAP 230.5"}
        assert client.get(name) == blob
        assert counter(node, "domicile_cache_hits_total") == hits + 1
    finally:
        client.close()


async def test_states_kept_decoded_follow_the_entry_bytes(pair: LocalCluster, redis: RedisServer) -> None:
    """A hit reuses the state decoded from the same bytes, and never one decoded from others."""
    node = pair.nodes[CACHED]
    assert node.cache is not None
    await put(pair, CACHED, "instruments", "bmw", b"BMW 81.0")
    await put(pair, CACHED, "instruments", "vw", b"VW 95.5")
    for key in ("bmw", "vw"):
        for _ in range(2):
            await pair.get(CACHED, "instruments", key)
    name = next(k for k in entries(redis) if k.endswith(b":e:instruments:bmw"))
    other = entry_for(redis, "instruments", "vw")
    assert other is not None and len(node.cache._decoded) == 2
    client = redis_client(redis)
    try:
        # The entry now holds other bytes (as a later fill would): they are what is answered.
        client.set(name, other, keepttl=True)
        assert await pair.values(CACHED, "instruments", "bmw") == {b"VW 95.5"}
    finally:
        client.close()


def test_the_decoded_states_kept_are_bounded() -> None:
    cache = ReadCache(CacheSettings(url="redis://127.0.0.1:1/0", region=CACHED), node_id="n1")
    try:
        for i in range(1, DECODED_ENTRIES_MAX + 11):
            blob = key_state_to_bytes(KeyState(context=CausalContext.of({"n1": i})))
            assert cache._decode_on_loop("ns", "k", blob) == KeyState(context=CausalContext.of({"n1": i}))
        assert len(cache._decoded) == DECODED_ENTRIES_MAX
        wide = KeyState(context=CausalContext.of({f"node-{i:04}": 1 for i in range(400)}))
        blob = key_state_to_bytes(wide)
        assert len(blob) > DECODED_ENTRY_BYTES_MAX
        assert cache._decode_on_loop("ns", "k", blob) == wide
        assert blob not in cache._decoded
    finally:
        cache.close()
