"""A record deleted here, whose tombstone this node purged, must not come back from a replica
restored from an old copy of its store that still holds it: not through the replica's
bootstrap (which prunes it), and not through an anti-entropy round that runs before it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster, eventually
from tests.support.rogue import rejected

SOURCE, REPLICA, NS, HORIZON_S = "eu-west-1", "eu-central-1", "prefs_eu", 1.0


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, [SOURCE, REPLICA])
    c.node_overrides.update(
        antientropy_interval_s=0, changelog_truncate_interval_s=0, tombstone_gc_horizon_s=HORIZON_S
    )
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


async def _acked_all(cluster: LocalCluster) -> None:
    source = cluster.nodes[SOURCE]
    last = await asyncio.to_thread(source.engine.last_lsn)

    async def done() -> bool:
        return source.replication.senders[REPLICA].acked_lsn >= last

    await eventually(done, 10, "the replica acknowledged everything")


@pytest.mark.parametrize("hold_bootstrap", [True, False], ids=["bootstrap-held", "natural-race"])
async def test_a_round_before_the_bootstrap_does_not_bring_a_purged_record_back(
    bounded: LocalCluster, tmp_path: Path, hold_bootstrap: bool
) -> None:
    """Regression: the source deletes `doomed`, every link acknowledges, the horizon passes and
    the source purges its tombstone. The replica comes back from an older copy of its store that
    still holds `doomed`. Its bootstrap would prune it, but a round of the source with the
    replica before that (held off here so that the order is certain; in a cluster a race) pulled
    `doomed` back into the source, and the source's snapshot then carried it to the replica."""
    pair = bounded
    source = pair.nodes[SOURCE]
    for i in range(3):
        await pair.put(SOURCE, NS, f"k{i}", b"v")
    await pair.put(SOURCE, NS, "doomed", b"deleted later")
    await _acked_all(pair)
    await pair.stop_node(REPLICA)
    shutil.copytree(pair.root / REPLICA, tmp_path / "copy")
    await pair.start_node(REPLICA)
    await pair.wait_linked()

    await pair.stub(SOURCE).Delete(spb.DeleteRequest(namespace=NS, key="doomed"), timeout=5)
    await _acked_all(pair)
    await asyncio.sleep(HORIZON_S + 0.2)
    await source.truncator.pass_once()
    assert await asyncio.to_thread(source.engine.get, NS, "doomed") is None  # purged

    # The replica comes back from its old copy. Its bootstrap has not reached the key yet (held
    # off here so the ordering is deterministic; in a cluster it is a race with the rounds).
    assert source.log_tail is not None
    source.log_tail.forget()
    bootstrap = source.replication.bootstrap
    if hold_bootstrap:
        for sender in source.replication.senders.values():
            sender.bootstrap = None
    await pair.stop_node(REPLICA)
    shutil.rmtree(pair.root / REPLICA)
    shutil.copytree(tmp_path / "copy", pair.root / REPLICA)
    replica = await pair.start_node(REPLICA)
    if hold_bootstrap:
        await pair.wait_linked()

    # The source's round with the replica, before the bootstrap.
    await source.entropy.round_with(REPLICA)
    for sender in source.replication.senders.values():
        sender.bootstrap = bootstrap

    async def bootstrapped() -> bool:
        done = replica.metrics.registry.get_sample_value(
            "domicile_replication_bootstraps_total", {"source": SOURCE, "target": REPLICA, "end": "target"}
        )
        return (done or 0) >= 1

    await eventually(bootstrapped, 15, "the replica bootstrapped")
    await replica.entropy.round_with(SOURCE)
    alive = {region: sorted(await pair.values(region, NS, "doomed")) for region in (SOURCE, REPLICA)}
    assert alive == {SOURCE: [], REPLICA: []}, f"the deleted record is back: {alive}"
    # The records never deleted are where they were.
    for region in (SOURCE, REPLICA):
        assert await pair.values(region, NS, "k0") == {b"v"}
    if hold_bootstrap:
        # The round offered the purged version, and the source refused it, counted.
        assert rejected(source, REPLICA, "purged") >= 1
