"""A Delete's tombstones carry the facts (subject, jurisdiction, classification) of the versions
it deletes (with a context, those the context covers), so they are placed and replicated
wherever those versions went."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.service import DeleteCommand
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, ["eu-west-1", "us-east-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


async def _record_of_s_a_in_both_regions(cluster: LocalCluster) -> None:
    """s-a's record (DE: may be held in both regions), written at eu-west-1 and replicated."""
    await cluster.put("eu-west-1", "customers", "k", b"about a", subject_id="s-a", subject_jurisdiction="DE")

    async def arrived() -> bool:
        return await cluster.values("us-east-1", "customers", "k") == {b"about a"}

    await eventually(arrived, 15.0, "s-a's record at us-east-1")


async def _sibling_of_s_b(cluster: LocalCluster) -> None:
    """A concurrent sibling about s-b (KR: may not be held in us-east-1), written later."""
    await cluster.put("eu-west-1", "customers", "k", b"about b", subject_id="s-b", subject_jurisdiction="KR")


async def _stream_passed_the_delete(cluster: LocalCluster) -> None:
    """A later write us-east-1 may hold: once it is there, the stream has passed the delete."""
    await cluster.put("eu-west-1", "customers", "marker", b"m", subject_id="s-m", subject_jurisdiction="DE")

    async def marker() -> bool:
        return await cluster.values("us-east-1", "customers", "marker") == {b"m"}

    await eventually(marker, 15.0, "the marker at us-east-1")


async def test_a_delete_with_a_context_is_placed_by_the_version_it_deletes(cluster: LocalCluster) -> None:
    """Regression: the tombstone took the facts of the newest version held, a sibling the Delete
    did not delete. Placed as that (KR) sibling, it was withheld from us-east-1, which went on
    serving the (DE) record the client had deleted."""
    west = cluster.nodes["eu-west-1"]
    await _record_of_s_a_in_both_regions(cluster)
    read = west.engine.get("customers", "k")
    assert read is not None
    await _sibling_of_s_b(cluster)
    # The client deletes what it read: s-a's version only.
    committed = await west.service.delete(
        DeleteCommand("customers", "k", context=read.context, principal="tester")
    )
    assert await cluster.values("eu-west-1", "customers", "k") == {b"about b"}
    tomb = committed.mutation.version
    assert (tomb.subject_id, tomb.subject_jurisdiction) == ("s-a", "DE")
    await _stream_passed_the_delete(cluster)
    await asyncio.sleep(1.0)
    assert await cluster.values("us-east-1", "customers", "k") == set()


async def test_a_delete_without_context_reaches_every_region_holding_a_deleted_version(
    cluster: LocalCluster,
) -> None:
    """Regression: a Delete without a context deletes every version of the key, but its
    tombstone took the facts of the newest alone; withheld from a region holding an older
    sibling about another subject, it left that region serving the deleted record."""
    west = cluster.nodes["eu-west-1"]
    await _record_of_s_a_in_both_regions(cluster)
    await _sibling_of_s_b(cluster)
    # The client deletes the key: no context, so every version is deleted.
    await west.service.delete(DeleteCommand("customers", "k", principal="tester"))
    assert await cluster.values("eu-west-1", "customers", "k") == set()
    await _stream_passed_the_delete(cluster)
    # us-east-1 no longer serves s-a's record, which the client deleted.
    assert await cluster.values("us-east-1", "customers", "k") == set()
