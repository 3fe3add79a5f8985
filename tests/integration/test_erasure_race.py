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

from domicile.subjects import ErasureOrder
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
