"""Erasure against a write in flight. The service checks the erasure block when a write
arrives; the write then waits (sealing, its audit entry, the queue). An erasure that runs in
that gap reads the subject's keys before the write commits, so only a check in the writer
itself keeps the write out. The interleaving is forced: the write is held after every
service-level check, just before it is queued for the writer, while the erasure runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.errors import DomicileError
from domicile.subjects import ErasureOrder
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from node.engine.base import Committed, LocalWrite
from tests.support.cluster import LocalCluster

SUBJECT = "subject-race-1"


@pytest.fixture
async def eu(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def hold_writes_of(node: Node, subject_id: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Holds the subject's writes after the service's checks, before the writer sees them."""
    reached, release = asyncio.Event(), asyncio.Event()
    submit = node.committer.submit

    async def held(write: LocalWrite) -> Committed:
        if write.subject_id == subject_id and not write.tombstone:
            reached.set()
            await release.wait()
        return await submit(write)

    node.committer.submit = held  # type: ignore[method-assign]
    return reached, release


async def erase_while_a_write_is_in_flight(cluster: LocalCluster) -> asyncio.Task[object]:
    node = cluster.nodes["eu-west-1"]
    put = {"subject_id": SUBJECT, "subject_jurisdiction": "DE"}
    await cluster.put("eu-west-1", "customers_eu", "c-1", b"before", **put)
    reached, release = hold_writes_of(node, SUBJECT)
    late = asyncio.create_task(cluster.put("eu-west-1", "customers_eu", "c-2", b"in flight", **put))
    await asyncio.wait_for(reached.wait(), 5)
    topology = node.view.topology
    order = ErasureOrder("erase-race-1", SUBJECT, 0, ("eu-west-1",))
    await node.eraser.erase(order, topology.cluster, topology.holds)
    release.set()
    await asyncio.wait([late], timeout=5)
    return late


def live_versions_of(node: Node, subject_id: str) -> list[str]:
    found = []
    for key in ("c-1", "c-2"):
        state = node.engine.get("customers_eu", key)
        if state is not None and any(v.subject_id == subject_id for v in state.live()):
            found.append(key)
    return found


async def test_a_write_overtaken_by_an_erasure_is_refused_in_the_writer(eu: LocalCluster) -> None:
    late = await erase_while_a_write_is_in_flight(eu)
    error = late.exception()
    assert isinstance(error, grpc.aio.AioRpcError), f"the write in flight was not refused: {late}"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "erased by request erase-race-1" in (error.details() or "")
    node = eu.nodes["eu-west-1"]
    assert live_versions_of(node, SUBJECT) == []
    assert node.eraser.refused_in_writer == 1


async def test_negative_control_without_the_writer_check_the_record_outlives_its_erasure(
    eu: LocalCluster,
) -> None:
    node = eu.nodes["eu-west-1"]
    node.committer.guard = None
    late = await erase_while_a_write_is_in_flight(eu)
    assert late.exception() is None, "without the check in the writer the write commits"
    assert live_versions_of(node, SUBJECT) == ["c-2"]


def put_entries(node: Node, key: str) -> list[AuditEntry]:
    found = (AuditEntry.decode(e.body) for e in node.audit.iter_all())
    return [e for e in found if e.action == "put" and e.key == key]


@pytest.mark.parametrize("carried", [True, False], ids=["commit-carries-entries", "entries-before-commit"])
async def test_regression_a_write_refused_in_the_writer_is_audited_as_refused(
    eu: LocalCluster, carried: bool
) -> None:
    # The write's allow entry used to reach the audit log alone (where the commit would have
    # carried it) or stand alone (where it was durable before the commit): both say it was written.
    node = eu.nodes["eu-west-1"]
    if not carried:
        # As on an engine whose commits carry no audit entries (MongoDB): the entry is made
        # durable in the audit log before the commit.
        node.service.carry_audit = False
    late = await erase_while_a_write_is_in_flight(eu)
    assert isinstance(late.exception(), grpc.aio.AioRpcError)
    # Durable before the caller was answered: no flush, no wait.
    assert [e.decision for e in put_entries(node, "c-2")][-1:] == ["refuse"]
    await node.audit.flush()
    entries = put_entries(node, "c-2")
    if carried:
        assert [e.decision for e in entries] == ["refuse"]
    else:
        assert [e.decision for e in entries] == ["allow", "refuse"]
    refusal = entries[-1]
    assert refusal.rule == "subject-erased"
    assert "request=erase-race-1 refused at commit" in refusal.detail
    assert refusal.subject and refusal.subject == put_entries(node, "c-1")[0].subject


async def test_regression_a_batch_record_refused_in_the_writer_is_audited_as_refused(
    eu: LocalCluster,
) -> None:
    node = eu.nodes["eu-west-1"]
    put = {"subject_id": SUBJECT, "subject_jurisdiction": "DE"}
    submit_many = node.committer.submit_many
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(writes: list[LocalWrite]) -> list[Committed | DomicileError]:
        reached.set()
        await release.wait()
        return await submit_many(writes)

    node.committer.submit_many = held  # type: ignore[method-assign]
    puts = [
        spb.PutRequest(namespace="customers_eu", key="c-3", value=b"in flight", **put),
        spb.PutRequest(namespace="customers_eu", key="c-4", value=b"no subject"),
    ]
    call = eu.stub("eu-west-1").PutBatch(spb.PutBatchRequest(puts=puts), timeout=10)
    batch: asyncio.Future[spb.PutBatchResponse] = asyncio.ensure_future(call)
    await asyncio.wait_for(reached.wait(), 5)
    topology = node.view.topology
    await node.eraser.erase(
        ErasureOrder("erase-race-2", SUBJECT, 0, ("eu-west-1",)), topology.cluster, topology.holds
    )
    release.set()
    response = await batch
    await node.audit.flush()
    assert [r.code for r in response.results] == [grpc.StatusCode.FAILED_PRECONDITION.value[0], 0]
    entries = put_entries(node, "c-3")
    assert [(e.decision, e.rule) for e in entries] == [("refuse", "subject-erased")]
    assert "request=erase-race-2 refused at commit" in entries[0].detail


async def test_regression_a_refusal_at_commit_is_audited_when_the_caller_has_gone(eu: LocalCluster) -> None:
    # The write's caller goes away (a deadline, a cancelled call) while its write is on the way to
    # the writer. The write goes on, and the writer's refusal (its subject was erased meanwhile)
    # is audited all the same: on an engine whose entries precede the commit, its allow entry
    # would otherwise stand alone.
    node = eu.nodes["eu-west-1"]
    put = {"subject_id": SUBJECT, "subject_jurisdiction": "DE"}
    await eu.put("eu-west-1", "customers_eu", "c-1", b"before", **put)
    reached, release = hold_writes_of(node, SUBJECT)
    late = asyncio.create_task(eu.put("eu-west-1", "customers_eu", "c-2", b"in flight", **put))
    await asyncio.wait_for(reached.wait(), 5)
    late.cancel()
    await asyncio.wait([late], timeout=5)
    await asyncio.sleep(0.5)  # the cancellation reaches the node's handler
    topology = node.view.topology
    await node.eraser.erase(
        ErasureOrder("erase-race-1", SUBJECT, 0, ("eu-west-1",)), topology.cluster, topology.holds
    )
    release.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while [e.decision for e in put_entries(node, "c-2")] != ["refuse"]:
        assert loop.time() < deadline, f"no refusal audited for c-2: {put_entries(node, 'c-2')}"
        await asyncio.sleep(0.05)
    assert live_versions_of(node, SUBJECT) == []
