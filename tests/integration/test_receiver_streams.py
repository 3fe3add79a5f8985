"""The receiver's view of a source across overlapping streams, and its count of re-sent
records: what GetNodeStatus and domicile_replication_duplicates_total report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.wire.records import mutation_to_pb
from tests.support.cluster import LocalCluster, eventually
from tests.support.rogue import RogueStream

SOURCE, TARGET = "eu-west-1", "eu-central-1"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [SOURCE, TARGET])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def _replicated(cluster: LocalCluster, count: int) -> int:
    for i in range(count):
        await cluster.put(SOURCE, "instruments", f"d{i}", b"v")
    last = cluster.nodes[SOURCE].engine.last_lsn()
    target = cluster.nodes[TARGET]

    async def arrived() -> bool:
        return target.receiver.stats_for(SOURCE).position >= last

    await eventually(arrived, 10, "the writes reached the target")
    return last


async def test_an_older_stream_ending_leaves_the_live_one_connected(pair: LocalCluster) -> None:
    """Regression: the end of any stream of a source marked it disconnected, so an old stream
    noticed late (a half-open connection, found by keepalive) after the source had reconnected
    showed its live link as down until the next reconnect."""
    await _replicated(pair, 1)
    target = pair.nodes[TARGET]
    sender = pair.nodes[SOURCE].replication.senders[TARGET]
    stats = target.receiver.stats[SOURCE]
    assert sender.connected and stats.connected and stats.streams == 1
    # A second stream of the same source opens and ends (the old, cut one, ending late).
    async with RogueStream(pair, target, SOURCE):
        assert stats.streams == 2
    await asyncio.sleep(0.5)
    assert sender.connected, "the real link is still streaming"
    assert stats.connected and stats.streams == 1
    # Negative control: once the live stream ends too, the source shows disconnected.
    await pair.stop_node(SOURCE)

    async def closed() -> bool:
        return not stats.connected

    await eventually(closed, 10, "the source shown disconnected once its streams ended")
    assert stats.streams == 0


async def test_a_resent_batch_counts_its_records_as_duplicates(pair: LocalCluster) -> None:
    """Regression: a batch re-sent after a reconnect (through_lsn at or before the position) was
    acknowledged with its records as duplicates, but domicile_replication_duplicates_total left
    them out."""
    last = await _replicated(pair, 3)
    target = pair.nodes[TARGET]
    registry = target.metrics.registry
    labels = {"source": SOURCE, "target": target.config.node_id}
    before = registry.get_sample_value("domicile_replication_duplicates_total", labels) or 0.0
    resent = [mutation_to_pb(m) for m in pair.nodes[SOURCE].engine.read_log(0, 10)]
    assert len(resent) == 3
    async with RogueStream(pair, target, SOURCE) as stream:
        ack = await stream.send(resent, last)
    assert ack.duplicate_count == 3 and ack.applied_through_lsn == last
    after = registry.get_sample_value("domicile_replication_duplicates_total", labels) or 0.0
    assert after - before == 3
