"""A Get sends its cache lookup before it is authorized, so that Redis answers while the call's
own work runs (node/cache/read_cache.py `read_ahead`): against a real redis-server, a hit asks
Redis once and only after authorization uses what it answered, and a refused or bad call gets
exactly the answer it got without the read-ahead, with nothing counted and no reply left over."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis

from domicile.authz.gate import Caller
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.redis_server import RedisServer
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.api.access import NodeAccess
from node.cache.read_cache import ReadAhead
from node.daemon import Node
from tests.cache.test_node_cache import CACHED, counter, put
from tests.support.cluster import LocalCluster

CACHE_COUNTERS = (
    ("domicile_cache_hits_total", {}),
    ("domicile_cache_misses_total", {}),
    ("domicile_cache_fallbacks_total", {"reason": "unavailable"}),
    ("domicile_cache_fallbacks_total", {"reason": "timeout"}),
    ("domicile_cache_fallbacks_total", {"reason": "error"}),
)


def gets_served(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))
    finally:
        client.close()


def cache_counts(node: Node) -> list[float]:
    return [counter(node, name, **labels) for name, labels in CACHE_COUNTERS]


def stranger(cluster: LocalCluster) -> spb_grpc.StorageNodeServiceStub:
    """A client the namespaces' policies do not allow to read."""
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client("stranger", (Role.APP,)))
    address = f"127.0.0.1:{cluster.ports[CACHED]}"
    return spb_grpc.StorageNodeServiceStub(dialer.channel(address, ExpectedPeer.node(CACHED, CACHED)))


async def refusal(
    stub: spb_grpc.StorageNodeServiceStub, request: spb.GetRequest
) -> tuple[object, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Get(request, timeout=5)
    return refused.value.code(), refused.value.details()


async def test_a_hit_sends_its_lookup_before_authorization_and_asks_redis_once(
    pair: LocalCluster, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "customers", "anna", b"Anna Schmidt, Berlin")
    assert await pair.values(CACHED, "customers", "anna") == {b"Anna Schmidt, Berlin"}  # the fill
    events: list[str] = []
    read_ahead, authorize = node.service.read_ahead, NodeAccess.namespace

    def recorded_read_ahead(namespace: str, key: str) -> ReadAhead | None:
        sent = read_ahead(namespace, key)
        events.append("sent" if sent is not None else "not sent")
        return sent

    def recorded_authorize(access: NodeAccess, context: Any, action: str, namespace: str) -> Caller:
        if action == "storage.Get":
            events.append("authorized")
        return authorize(access, context, action, namespace)

    monkeypatch.setattr(node.service, "read_ahead", recorded_read_ahead)
    monkeypatch.setattr(NodeAccess, "namespace", recorded_authorize)
    hits, gets = counter(node, "domicile_cache_hits_total"), gets_served(redis)
    for _ in range(3):
        assert await pair.values(CACHED, "customers", "anna") == {b"Anna Schmidt, Berlin"}
    assert events == ["sent", "authorized"] * 3
    assert counter(node, "domicile_cache_hits_total") == hits + 3
    # One GET per hit: the lookup took the reply of the GET sent ahead rather than asking again.
    assert gets_served(redis) == gets + 3


async def test_a_refused_or_bad_get_answers_as_without_the_read_ahead_and_counts_nothing(
    pair: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "customers", "anna", b"Anna Schmidt, Berlin")
    await put(pair, CACHED, "customers", "bert", b"Bert Weber, Hamburg")
    for key in ("anna", "bert"):
        await pair.values(CACHED, "customers", key)  # both cached
    requests = [
        (stranger(pair), spb.GetRequest(namespace="customers", key="anna")),  # not allowed
        (pair.stub(CACHED), spb.GetRequest(namespace="nowhere", key="anna")),  # no such namespace
        (pair.stub(CACHED), spb.GetRequest(namespace="customers", key="")),  # no key
        (pair.stub(CACHED), spb.GetRequest(namespace="customers", key="a\x00b")),  # a NUL
    ]
    before = cache_counts(node)
    with_ahead = [await refusal(stub, request) for stub, request in requests]
    assert with_ahead[0][0] == grpc.StatusCode.PERMISSION_DENIED
    assert cache_counts(node) == before
    # The replies of the GETs sent ahead were dropped: the next calls get their own.
    assert await pair.values(CACHED, "customers", "bert") == {b"Bert Weber, Hamburg"}
    assert await pair.values(CACHED, "customers", "anna") == {b"Anna Schmidt, Berlin"}
    monkeypatch.setattr(node.service, "read_ahead", lambda namespace, key: None)
    assert [await refusal(stub, request) for stub, request in requests] == with_ahead
