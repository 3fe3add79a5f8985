"""The floor of a cache hit that `make bench-cache` measures beside the node's hits: the echo
server reading one key from a real redis-server before each answer (bench/echo_server.py
--redis-url), and the copy of a node's cache entry it reads (bench.cache_hits.copy_entry)."""

from __future__ import annotations

import grpc
import pytest
import redis as redis_py

from bench.cache_hits import FLOOR_KEY, copy_entry
from bench.client import echo_call
from bench.cluster import SOLO_NAMESPACE
from bench.echo_server import start
from domicile.redis_server import RedisServer


async def test_the_floor_answers_each_call_after_reading_its_key(redis: RedisServer) -> None:
    client = redis_py.Redis.from_url(redis.url)
    client.set(FLOOR_KEY, b"entry")
    server, port = await start("127.0.0.1:0", None, redis.url, FLOOR_KEY.encode())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = echo_call(channel, SOLO_NAMESPACE, "floor", b"v" * 256)
            for i in range(3):
                answer = await call(i)
                assert answer.key == f"floor-{i}" and answer.value == b"v" * 256
            # Each call made its GET: Redis counted them (the first call may connect first).
            assert int(client.info("stats")["keyspace_hits"]) >= 3
            # Negative control: a floor that read nothing would be no floor of a hit.
            client.delete(FLOOR_KEY)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(3)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert FLOOR_KEY in (refused.value.details() or "")
    finally:
        await server.stop(0)
        client.close()


def test_the_floor_reads_a_copy_of_the_nodes_entry(redis: RedisServer) -> None:
    client = redis_py.Redis.from_url(redis.url)
    try:
        client.set(f"domicile:node-a:g1:e:{SOLO_NAMESPACE}:hit-0".encode(), b"f-sealed-state")
        client.set(f"domicile:node-b:g1:e:{SOLO_NAMESPACE}:hit-0".encode(), b"another node's")
        copy_entry(redis.url, "node-a", "hit-0")
        assert client.get(FLOOR_KEY) == b"f-sealed-state"
        with pytest.raises(RuntimeError, match="no entry of 'hit-1'"):
            copy_entry(redis.url, "node-a", "hit-1")
    finally:
        client.close()
