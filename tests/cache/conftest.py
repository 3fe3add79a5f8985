from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from domicile.redis_server import RedisServer
from tests.cache.test_node_cache import CACHED, cache_ready, start_pair
from tests.support.cluster import LocalCluster
from tests.support.redis import redis_server


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def pair(tmp_path: Path, redis: RedisServer) -> AsyncIterator[LocalCluster]:
    """A cached node and a peer (tests.cache.test_node_cache.start_pair), the cache ready."""
    cluster = await start_pair(tmp_path, redis)
    try:
        await cache_ready(cluster.nodes[CACHED])
        yield cluster
    finally:
        await cluster.stop()
