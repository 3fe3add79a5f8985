"""The read cache of a running node (SQLite store, real redis-server) under bounded growth: the
changes the group committer runs as jobs that return no ApplyOutcome (a bootstrap's prune of
what its source purged, tombstone garbage collection) reach the cache like any other change, so
it never serves a state the store no longer holds. Two EU nodes, as in
tests/integration/test_bounded_growth.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.redis_server import RedisServer
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from tests.cache.test_node_cache import DEADLINE_MS, cache_ready, counter, settled
from tests.integration.test_bounded_growth import (
    HORIZON_S,
    NS,
    REPLICA,
    SOURCE,
    acked_all,
    has_all,
    purge_past_horizon,
    put_many,
    replace_with_copy,
    take_copy,
)
from tests.support.cluster import LocalCluster, eventually

# A namespace of both nodes that keeps siblings, so a write's context is checked (an lww one
# supersedes everything whatever the context).
SIBLINGS = "customers_eu"
SUBJECT_ID, JURISDICTION = "s-1", "DE"


async def linked_pair(root: Path, redis: RedisServer, cached: str) -> LocalCluster:
    """The two nodes, `cached` with a read cache; truncation and rounds run only when asked."""
    cluster = LocalCluster(root, [SOURCE, REPLICA])
    cluster.node_overrides.update(
        antientropy_interval_s=0, changelog_truncate_interval_s=0, tombstone_gc_horizon_s=HORIZON_S
    )
    cluster.region_overrides[cached] = {
        "cache_redis_url": redis.url,
        "cache_redis_region": cached,
        "cache_deadline_ms": DEADLINE_MS,
    }
    await cluster.start_linked()
    return cluster


@pytest.fixture
async def source_cached(tmp_path: Path, redis: RedisServer) -> AsyncIterator[LocalCluster]:
    cluster = await linked_pair(tmp_path, redis, SOURCE)
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def replica_cached(tmp_path: Path, redis: RedisServer) -> AsyncIterator[LocalCluster]:
    cluster = await linked_pair(tmp_path, redis, REPLICA)
    try:
        yield cluster
    finally:
        await cluster.stop()


async def get_twice(
    cluster: LocalCluster, node: Node, region: str, key: str, namespace: str = NS
) -> spb.GetResponse:
    """A Get that fills the cache, then one the cache answers."""
    await settled(node)
    await cluster.get(region, namespace, key)
    hits = counter(node, "domicile_cache_hits_total")
    got = await cluster.get(region, namespace, key)
    assert counter(node, "domicile_cache_hits_total") == hits + 1, "the second Get was not a hit"
    return got


async def test_a_purged_tombstone_leaves_the_cache_and_a_write_with_the_new_context_succeeds(
    source_cached: LocalCluster,
) -> None:
    pair = source_cached
    source = pair.nodes[SOURCE]
    await cache_ready(source)
    await pair.put(SOURCE, SIBLINGS, "y", b"v1", subject_id=SUBJECT_ID, subject_jurisdiction=JURISDICTION)
    await pair.stub(SOURCE).Delete(spb.DeleteRequest(namespace=SIBLINGS, key="y"), timeout=5)
    tombstone = await get_twice(pair, source, SOURCE, "y", SIBLINGS)
    assert not tombstone.found
    await purge_past_horizon(pair, "y", SIBLINGS)
    await settled(source)
    # A client reads the key (no record) and writes it with the context it was given. From a
    # cache still holding the purged tombstone, that context names a counter of this node the
    # store no longer has for the key, and the write is refused INVALID_ARGUMENT.
    got = await pair.get(SOURCE, SIBLINGS, "y")
    assert not got.found
    put = spb.PutRequest(
        namespace=SIBLINGS,
        key="y",
        value=b"v2",
        context_token=got.context_token,
        subject_id=SUBJECT_ID,
        subject_jurisdiction=JURISDICTION,
    )
    await pair.stub(SOURCE).Put(put, timeout=5)
    assert await pair.values(SOURCE, SIBLINGS, "y") == {b"v2"}


async def test_a_version_a_bootstrap_prunes_leaves_the_replicas_cache(
    replica_cached: LocalCluster, tmp_path: Path
) -> None:
    pair = replica_cached
    source = pair.nodes[SOURCE]
    await put_many(pair, "k", 3)
    await pair.put(SOURCE, NS, "doomed", b"deleted later")
    await acked_all(pair)
    # The replica's old copy holds "doomed" alive.
    await take_copy(pair, tmp_path / "copy")
    await pair.stub(SOURCE).Delete(spb.DeleteRequest(namespace=NS, key="doomed"), timeout=5)
    await purge_past_horizon(pair, "doomed")

    # The replica comes back from its copy and, before it is bootstrapped, caches "doomed".
    assert source.log_tail is not None
    source.log_tail.forget()  # so that only a bootstrap can bring the replica up to date
    bootstrap = source.replication.bootstrap
    for sender in source.replication.senders.values():
        sender.bootstrap = None
    replica = await replace_with_copy(pair, tmp_path / "copy")
    await cache_ready(replica)
    stale = await get_twice(pair, replica, REPLICA, "doomed")
    assert {v.value for v in stale.versions} == {b"deleted later"}

    for sender in source.replication.senders.values():
        sender.bootstrap = bootstrap

    async def bootstrapped() -> bool:
        return bool(replica.metrics.bootstraps.labels(SOURCE, REPLICA, "target")._value.get() >= 1)

    await eventually(bootstrapped, 15, "the replica bootstrapped")
    assert replica.metrics.bootstrap_pruned.labels(SOURCE, REPLICA)._value.get() >= 1
    assert await asyncio.to_thread(replica.engine.get, NS, "doomed") is None, "the bootstrap pruned it"
    assert await has_all(pair, [f"k{i}" for i in range(3)])
    await settled(replica)
    assert await pair.values(REPLICA, NS, "doomed") == set(), "the cache still serves the pruned record"
