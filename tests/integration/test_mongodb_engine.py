"""Nodes on the MongoDB engine, against a real MongoDB wire-protocol server: a mixed cluster
(eu-west-1 on MongoDB, every other region on SQLite) runs the replication, conflict and erasure
scenarios of the SQLite suites unchanged; an unreachable database stops a node cleanly and a
returning one lets it serve again by itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domicile import errors
from domicile.audit import AuditEntry
from domicile.causality import CausalContext
from domicile.hlc import HybridClock
from domicile.ports import free_port
from domicile.wire.errors import status_for
from node.daemon import Node
from node.engine.base import Committed, LocalWrite
from node.engine.mongo import MongoEngine
from tests.integration import test_replication as replication
from tests.integration import test_subject_rights as subject_rights
from tests.support.cluster import LocalCluster, eventually
from tests.support.mongo import MongoServer, with_option
from tests.support.node_stream import node_stream
from tests.support.packs import sample_pack

ON_MONGODB = "eu-west-1"


# For a test that takes its database away: an operation fails after this long without a
# reachable server instead of the engine's default 2 s (an option of the URI wins over it).
OUTAGE_URI_OPTION = "serverSelectionTimeoutMS=500"


def put_on_mongodb(
    cluster: LocalCluster, server: MongoServer, region: str = ON_MONGODB, *, outage: bool = False
) -> None:
    """`outage`: the test stops the server; calls fail fast while it is down."""
    cluster.region_overrides[region] = {
        "engine": "mongodb",
        "mongodb_uri": with_option(server.uri, OUTAGE_URI_OPTION) if outage else server.uri,
        "mongodb_database": server.database_name(region.replace("-", "_")),
    }


async def mixed(cluster: LocalCluster, server: MongoServer) -> LocalCluster:
    put_on_mongodb(cluster, server)
    await cluster.start_linked()
    assert isinstance(cluster.nodes[ON_MONGODB].engine, MongoEngine)
    others = [r for r in cluster.regions if r != ON_MONGODB]
    assert others and all(not isinstance(cluster.nodes[r].engine, MongoEngine) for r in others)
    return cluster


@pytest.fixture
async def eu_pair_mixed(tmp_path: Path, mongo_server: MongoServer) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1", "us-east-1"], proxies=True)
    try:
        yield await mixed(cluster, mongo_server)
    finally:
        await cluster.stop()


@pytest.fixture
async def eu_us_mixed(tmp_path: Path, mongo_server: MongoServer) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path,
        ["eu-west-1", "eu-central-1", "us-east-1"],
        pack=sample_pack(),
        namespaces=subject_rights.NAMESPACES,
    )
    try:
        yield await mixed(cluster, mongo_server)
    finally:
        await cluster.stop()


# -- a mixed cluster behaves as an all-SQLite one ------------------------------------------------


async def test_mixed_concurrent_writes_become_siblings_and_a_context_supersedes_them(
    eu_pair_mixed: LocalCluster,
) -> None:
    await replication.test_concurrent_writes_become_siblings_and_a_context_supersedes_them(eu_pair_mixed)


async def test_mixed_lww_resolves_a_partitioned_conflict_and_counts_it(eu_pair_mixed: LocalCluster) -> None:
    await replication.test_lww_resolves_a_partitioned_conflict_and_counts_it(eu_pair_mixed)


async def test_mixed_target_restart_resumes_without_loss(eu_pair_mixed: LocalCluster) -> None:
    await replication.test_target_restart_resumes_without_loss(eu_pair_mixed)


async def test_mixed_erasure_reaches_every_region_and_keeps_what_the_law_keeps(
    eu_us_mixed: LocalCluster,
) -> None:
    await subject_rights.test_an_erasure_reaches_every_region_keeps_what_the_law_keeps_and_leaves_a_receipt(
        eu_us_mixed
    )
    # The block survives a restart of the MongoDB node (it is stored, one document per subject).
    await eu_us_mixed.stop_node(ON_MONGODB)
    await eu_us_mixed.start_node(ON_MONGODB)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await subject_rights.put(eu_us_mixed, ON_MONGODB, "customers", "anna-3", "s-anna", b"back?")
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_mixed_compliance_scan_checks_the_same_copies_on_both_engines(
    eu_us_mixed: LocalCluster,
) -> None:
    c = eu_us_mixed
    for i in range(5):
        await subject_rights.put(c, "eu-central-1", "customers", f"c-{i}", f"s-{i}", b"profile")
        await subject_rights.put(c, ON_MONGODB, "trades", f"t-{i}", f"s-{i}", b"BUY 1")
    for i in range(5):
        await subject_rights.replicated(c, ["eu-west-1", "eu-central-1"], "customers", f"c-{i}")
        await subject_rights.replicated(c, ["eu-west-1", "eu-central-1"], "trades", f"t-{i}")
    on_mongo = await c.nodes[ON_MONGODB].compliance_scan(0, "test")
    on_sqlite = await c.nodes["eu-central-1"].compliance_scan(0, "test")
    assert on_mongo.versions_checked == on_sqlite.versions_checked == 10
    assert on_mongo.violations_total == on_sqlite.violations_total == 0


# -- failures --------------------------------------------------------------------------------


async def test_a_node_whose_database_is_unreachable_at_start_names_it_and_does_not_start(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, [ON_MONGODB])
    await cluster.start_coordinator()
    try:
        port = free_port()  # nothing listens there
        uri = f"mongodb://127.0.0.1:{port}/"
        node = Node(cluster.node_config(ON_MONGODB, engine="mongodb", mongodb_uri=uri))
        with pytest.raises(errors.Unavailable, match=f"127.0.0.1:{port}") as info:
            await node.start()
        assert "unreachable" in info.value.message
        await node.stop(grace_s=0.1)
    finally:
        await cluster.stop()


async def health_of(cluster: LocalCluster, region: str) -> int:
    stub = health_pb2_grpc.HealthStub(cluster.channel(cluster.nodes[region].address))
    response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(response.status)


async def test_a_database_outage_fails_writes_unavailable_and_the_node_recovers_by_itself(
    tmp_path: Path,
) -> None:
    server = MongoServer(tmp_path / "mongodb")
    if server.external:
        pytest.fail("this test kills its own server; unset DOMICILE_TEST_MONGODB_URI to run it")
    server.start()
    cluster = LocalCluster(tmp_path / "cluster", [ON_MONGODB])
    try:
        put_on_mongodb(cluster, server, outage=True)
        await cluster.start_linked()
        await cluster.put(ON_MONGODB, "instruments", "before", b"1")
        assert await health_of(cluster, ON_MONGODB) == health_pb2.HealthCheckResponse.SERVING

        server.kill()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.put(ON_MONGODB, "instruments", "during", b"2")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "MongoDB at" in (info.value.details() or "")

        async def not_serving() -> bool:
            return await health_of(cluster, ON_MONGODB) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, 15, "health NOT_SERVING while the database is down")

        server.start()  # the same port and storage: the server came back

        async def serving() -> bool:
            return await health_of(cluster, ON_MONGODB) == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, 20, "health SERVING once the database answers")
        await cluster.put(ON_MONGODB, "instruments", "after", b"3")
        assert await cluster.values(ON_MONGODB, "instruments", "before") == {b"1"}
        assert await cluster.values(ON_MONGODB, "instruments", "after") == {b"3"}
        assert await cluster.values(ON_MONGODB, "instruments", "during") == set()
    finally:
        await cluster.stop()
        server.stop()


def test_a_key_state_past_the_document_limit_is_refused_alone_and_not_as_retriable(
    mongo_server: MongoServer,
) -> None:
    """Siblings of 1 MiB values grow a key state past MongoDB's 16 MiB document limit: the write
    that would pass it is refused FAILED_PRECONDITION (no retry changes it) naming the key, the
    size and the limit, while a write of another key in the same commit is made."""
    engine = MongoEngine(mongo_server.uri, mongo_server.database_name("big"), "n1", ON_MONGODB)
    clock = HybridClock()
    try:
        refused: errors.DomicileError | None = None
        for i in range(20):
            big = LocalWrite("ns", "big", value=bytes([i]) * (1 << 20), supersedes=CausalContext.empty())
            small = LocalWrite("ns", f"small-{i}", value=b"fine")
            before = engine.get("ns", "big")
            result, other = engine.commit_local([big, small], clock.now)
            assert isinstance(other, Committed), f"the other key's write failed with the big one: {other}"
            if isinstance(result, errors.DomicileError):
                refused = result
                break
        assert refused is not None, "20 siblings of 1 MiB never reached the 16 MiB limit"
        print("refused:", refused)
        assert isinstance(refused, errors.FailedPrecondition) and not refused.retriable
        assert status_for(refused) == grpc.StatusCode.FAILED_PRECONDITION
        assert "ns/big" in refused.message and "16 MiB" in refused.message
        assert re.search(r"state of \d{8,} bytes", refused.message), refused.message
        # Nothing of the refused write was stored; the other write of its commit was.
        assert engine.get("ns", "big") == before
        assert engine.get("ns", f"small-{i}") is not None
    finally:
        engine.close()


async def test_regression_a_replicated_state_past_the_document_limit_is_refused_alone_and_the_link_goes_on(
    tmp_path: Path, mongo_server: MongoServer
) -> None:
    """Concurrent 1 MiB siblings from a peer grow a key state past MongoDB's 16 MiB limit at the
    receiver: those records are refused (audited) alone and the rest of their batch applied.
    The whole batch failed, and the source sent it again for ever: the link stood still."""
    cluster = LocalCluster(tmp_path, [ON_MONGODB, "eu-central-1"])
    put_on_mongodb(cluster, mongo_server)
    await cluster.start_linked()
    try:
        await _past_the_limit_by_replication(cluster)
    finally:
        await cluster.stop()


async def _past_the_limit_by_replication(cluster: LocalCluster) -> None:
    target = cluster.nodes[ON_MONGODB]
    acks = []
    async with node_stream(cluster, "eu-central-1", ON_MONGODB, timeout_s=60) as stream:
        for batch in range(7):  # 3 siblings of 1 MiB a batch: past 16 MiB in the sixth
            mutations = [
                stream.mutation("instruments", "big", bytes([batch * 3 + i]) * (1 << 20)) for i in range(3)
            ]
            mutations.append(stream.mutation("instruments", f"small-{batch}", b"fine"))
            acks.append(await stream.send(mutations))
        # An anti-entropy repair (and a bootstrap part) carrying such records refuses them
        # alone too: it failed whole, in every round.
        repair = [stream.mutation("instruments", "big", bytes([99 + i]) * (1 << 20)) for i in range(3)]
        repair.append(stream.mutation("instruments", "small-repaired", b"fine"))
    assert acks[-1] == stream.lsn - len(repair)  # every batch acknowledged: the link went on
    engine = target.engine
    for batch in range(7):
        assert engine.get("instruments", f"small-{batch}") is not None
    big = engine.get("instruments", "big")
    assert big is not None and 5 * 3 <= len(big.versions) < 7 * 3
    await target.audit.flush()
    rules = [AuditEntry.decode(e.body).rule for e in target.audit.iter_all()]
    assert "state-too-large" in rules
    result = await target.receiver.apply_repair("eu-central-1", repair)
    assert result.refused >= 1 and ("instruments", "small-repaired") in result.repaired
