"""Regression: a local write whose commit answer is lost (MongoDB engine: the database
commits, the answer never arrives, the commit's retries find the database unreachable:
CommitOutcomeUnknown) is durable in
the change log, but the group committer does not tell the in-memory log tail, which goes on
saying that the log ends before it. The tail's contract (node/engine/log_tail.py) is to serve
exactly what read_log serves, or None; here it serves "nothing after N" while the store holds
N+1. Every link reads the tail first, so the write is never sent to any replica until some other
local write happens to commit (on a quiet node: never). A client that retries the write with its
request id gets the replay of the durable write, which is not appended either.

The answer is lost by a TCP proxy between the source node and its database (as in
tests/cache/test_commit_outcome_unknown.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from pymongo.uri_parser import parse_uri

from domicile.errors import Unavailable
from tests.support.cluster import LocalCluster, eventually
from tests.support.mongo import MongoServer, with_option
from tests.support.tcp_proxy import TcpProxy

SOURCE = "eu-west-1"
REPLICA = "eu-central-1"
NS = "prefs_eu"
COMMIT_COMMAND = b"commitTransaction\x00"


@pytest.fixture
async def cluster(mongo_server: MongoServer, tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, TcpProxy]]:
    host, port = parse_uri(mongo_server.uri)["nodelist"][0]
    proxy = TcpProxy(f"{host}:{port}")
    await proxy.start()
    cluster = LocalCluster(tmp_path, [SOURCE, REPLICA])
    cluster.node_overrides.update(antientropy_interval_s=0, changelog_truncate_interval_s=0)
    cluster.region_overrides[SOURCE] = {
        "engine": "mongodb",
        "mongodb_uri": with_option(
            f"mongodb://{proxy.address}/?directConnection=true", "serverSelectionTimeoutMS=300"
        ),
        "mongodb_database": mongo_server.database_name("tail_unknown"),
    }
    await cluster.start_linked()
    try:
        yield cluster, proxy
    finally:
        await cluster.stop()
        await proxy.stop()


async def replica_has(cluster: LocalCluster, key: str) -> bool:
    state = await asyncio.to_thread(cluster.nodes[REPLICA].engine.get, NS, key)
    return state is not None and state.has_live()


async def test_a_write_whose_commit_answer_was_lost_still_replicates(
    cluster: tuple[LocalCluster, TcpProxy],
) -> None:
    pair, proxy = cluster
    source = pair.nodes[SOURCE]
    await pair.put(SOURCE, NS, "before", b"v1")
    await eventually(lambda: replica_has(pair, "before"), 10, "the first write replicated")

    proxy.lose_answer_to(COMMIT_COMMAND)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pair.put(SOURCE, NS, "lost-answer", b"v2")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
    assert proxy.answers_lost == 1
    proxy.heal()

    async def durable() -> bool:
        try:
            state = await asyncio.to_thread(source.engine.get, NS, "lost-answer")
        except Unavailable:
            return False
        return state is not None and state.has_live()

    await eventually(durable, 30, "the healed database answering: the write is durable")
    last = await asyncio.to_thread(source.engine.last_lsn)
    tail = source.log_tail
    assert tail is not None
    served = tail.read(last - 1, 10)
    stored = await asyncio.to_thread(source.engine.read_log, last - 1, 10)
    try:
        await eventually(lambda: replica_has(pair, "lost-answer"), 10, "the durable write replicated")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: the source's store holds change-log entry {last} ({[m.key for m in stored]}), "
            f"but its log tail says last={tail.last_lsn} and serves {served!r} after {last - 1}"
        ) from None
