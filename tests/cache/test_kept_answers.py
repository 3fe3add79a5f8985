"""A Get hit whose answer would be the same bytes as an earlier hit's sends those bytes
(node/api/read_answers.py), against a real redis-server: kept only for what it was built from.
A changed entry, another key, another redaction by the read policy, or a record sealed under a
subject's key (which an erasure can make unreadable) each get an answer built for them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from domicile.errors import InvalidArgument
from domicile.policy import Decision
from domicile.redis_server import RedisServer
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.records import context_from_pb
from node.api.storage import StorageServicer
from node.daemon import Node
from node.service import ReadResult
from tests.cache.test_node_cache import CACHED, counter, put
from tests.support.cluster import LocalCluster


@pytest.fixture
def redis_server(redis: RedisServer) -> RedisServer:
    return redis


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys whose Get answers were built (not sent as kept bytes), in call order."""
    keys: list[str] = []
    build = StorageServicer._get_response

    def counted(servicer: StorageServicer, request: spb.GetRequest, result: ReadResult) -> spb.GetResponse:
        keys.append(request.key)
        return build(servicer, request, result)

    monkeypatch.setattr(StorageServicer, "_get_response", counted)
    return keys


async def hit(cluster: LocalCluster, namespace: str, key: str) -> spb.GetResponse:
    node = cluster.nodes[CACHED]
    hits = counter(node, "domicile_cache_hits_total")
    answer = await cluster.get(CACHED, namespace, key)
    assert counter(node, "domicile_cache_hits_total") == hits + 1, "a cache hit"
    return answer


def copy_entry(node: Node, redis_server: RedisServer, key: str, to: str) -> None:
    """Copies the cache entry of instruments/`key`, byte for byte, to instruments/`to` in Redis."""
    assert node.cache is not None
    store, generation = node.cache.store, node.cache.coherence.generation
    plain = redis.Redis.from_url(redis_server.url)
    try:
        entry = plain.get(store.entry_key(generation, "instruments", key))
        assert entry is not None
        plain.set(store.entry_key(generation, "instruments", to), entry)
    finally:
        plain.close()


def token_names(node: Node, namespace: str, key: str, answer: spb.GetResponse) -> bool:
    """The answer's context token verifies for this key and carries the answer's context."""
    try:
        opened = node.service.tokens.open(namespace, key, answer.context_token, node.service.limits)
    except InvalidArgument:
        return False
    return opened == context_from_pb(answer.context, node.service.limits)


async def test_a_repeated_hit_sends_the_kept_bytes_and_a_changed_entry_or_key_does_not(
    pair: LocalCluster, built: list[str], redis_server: RedisServer
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "instruments", "eurusd", b"1.0842")
    await pair.get(CACHED, "instruments", "eurusd")  # the miss that fills the entry
    first = await hit(pair, "instruments", "eurusd")
    assert built == ["eurusd", "eurusd"]
    again = await hit(pair, "instruments", "eurusd")
    assert built == ["eurusd", "eurusd"], "the second hit sent the kept bytes"
    assert again == first and [v.value for v in again.versions] == [b"1.0842"]
    assert token_names(node, "instruments", "eurusd", again)

    # Another key whose entry holds the very same bytes (copied in Redis): its own token.
    copy_entry(node, redis_server, "eurusd", "copy")
    copy = await hit(pair, "instruments", "copy")
    assert copy.versions == first.versions
    assert token_names(node, "instruments", "copy", copy)
    assert not token_names(node, "instruments", "eurusd", copy)

    await put(pair, CACHED, "instruments", "eurusd", b"1.0851")  # a new entry
    await pair.get(CACHED, "instruments", "eurusd")
    changed = await hit(pair, "instruments", "eurusd")
    assert [v.value for v in changed.versions] == [b"1.0851"]
    assert changed.context != first.context and token_names(node, "instruments", "eurusd", changed)

    await put(pair, CACHED, "instruments", "gbpusd", b"1.0851")  # the same value, another key
    await pair.get(CACHED, "instruments", "gbpusd")
    other = await hit(pair, "instruments", "gbpusd")
    assert built[-1] == "gbpusd"
    assert token_names(node, "instruments", "gbpusd", other)
    assert not token_names(node, "instruments", "eurusd", other)


async def test_another_redaction_gets_its_own_answer(
    pair: LocalCluster, built: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = pair.nodes[CACHED]
    await put(pair, CACHED, "instruments", "eurusd", b"1.0842")
    await pair.get(CACHED, "instruments", "eurusd")
    plain = await hit(pair, "instruments", "eurusd")
    decide = node.service._read_decisions

    def redacting(*args: Any) -> list[Decision]:
        # The policy's outcome for a caller it shows less: the value removed.
        return [dataclasses.replace(d, redacted_fields=("value",)) for d in decide(*args)]

    monkeypatch.setattr(node.service, "_read_decisions", redacting)
    redacted = await hit(pair, "instruments", "eurusd")
    (version,) = redacted.versions
    assert version.value == b"" and list(version.redacted_fields) == ["value"]
    monkeypatch.setattr(node.service, "_read_decisions", decide)
    assert await hit(pair, "instruments", "eurusd") == plain
    assert built == ["eurusd"] * 3  # the fill, the plain hit, the redacted one; then kept


async def test_a_record_sealed_under_a_subjects_key_is_built_for_every_hit(
    pair: LocalCluster, built: list[str]
) -> None:
    await put(pair, CACHED, "customers", "anna", b"Anna Schmidt, Berlin")
    await pair.get(CACHED, "customers", "anna")
    for _ in range(2):
        assert [v.value for v in (await hit(pair, "customers", "anna")).versions] == [b"Anna Schmidt, Berlin"]
    assert built == ["anna"] * 3


async def test_a_hit_is_planned_once_per_entry_and_the_policy_still_decides_every_read(
    pair: LocalCluster, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    node = pair.nodes[CACHED]
    service = node.service
    opened: list[str] = []
    open_on_loop = service._open_on_loop

    def counted(spec: Any, key: str, state: Any) -> Any:
        opened.append(key)
        return open_on_loop(spec, key, state)

    monkeypatch.setattr(service, "_open_on_loop", counted)
    await put(pair, CACHED, "instruments", "eurusd", b"1.0842")
    await pair.get(CACHED, "instruments", "eurusd")  # the miss that fills the entry
    decided = reads_decided(node)
    for _ in range(3):
        answer = await hit(pair, "instruments", "eurusd")
        assert [v.value for v in answer.versions] == [b"1.0842"]
    assert opened == ["eurusd"], "planned at the first hit, then kept"
    assert reads_decided(node) == decided + 3, "every hit is still decided and counted by the read policy"

    # The same bytes under another key are planned for that key.
    copy_entry(node, redis_server, "eurusd", "copy")
    await hit(pair, "instruments", "copy")
    assert opened == ["eurusd", "copy"]

    await put(pair, CACHED, "instruments", "eurusd", b"1.0851")  # a new entry: a new plan
    await pair.get(CACHED, "instruments", "eurusd")
    assert [v.value for v in (await hit(pair, "instruments", "eurusd")).versions] == [b"1.0851"]
    assert opened == ["eurusd", "copy", "eurusd"]


def reads_decided(node: Node) -> float:
    """The read decisions the node's policy made, whatever their outcome and rule."""
    return sum(
        sample.value
        for family in node.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "domicile_policy_decisions_total" and sample.labels.get("action") == "read"
    )
