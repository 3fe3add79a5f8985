"""A node's audit log put back from an older copy of its data directory has lost entries its
head on record covers. A longer head is taken only with the proof that the log extends the one
on record (the hash of the log's entry at the recorded size), which such a log cannot give; so
a copy the node does not know it runs keeps its loss on record, and `domicile audit verify`
keeps reporting it. A node that finds at start it was put back (node/rewind.py) is a new
incarnation and says so: its chain starts again at the coordinator, and the old chain's head is
kept there, closed.

Found in a torture run: a rewound node's heads were refused while its log was shorter, then,
once it grew past the recorded size, one replaced the head that proved the loss and the check
passed: whether a run's audit check failed depended on how much the node wrote after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.api import servicer
from coordinator.daemon import Coordinator
from domicile.audit import verify_log
from domicile.errors import NotFound
from tests.integration.test_rewind import CENTRAL, NS, WEST, rewind_west
from tests.support.cluster import LocalCluster, eventually


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, Coordinator]]:
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL])
    await cluster.start_linked()
    try:
        assert cluster.coordinator is not None
        yield cluster, cluster.coordinator
    finally:
        await cluster.stop()


def metric(cluster: LocalCluster, region: str) -> float:
    return cluster.nodes[region].metrics.audit_export_refused._value.get()  # type: ignore[no-any-return]


async def test_a_restarted_node_proves_its_log_extends_the_head_on_record(
    pair: tuple[LocalCluster, Coordinator],
) -> None:
    # The positive control: a plain restart's log extends the head on record, and its next
    # heads are taken (its first one after proving the recorded size from its own log).
    cluster, coordinator = pair
    await cluster.put(WEST, NS, "k", b"v")
    await eventually(lambda: recorded_covers(cluster, WEST), 10, "west's head on record")
    before = coordinator.audit_heads.get(WEST).head.size
    await cluster.stop_node(WEST)
    await cluster.start_node(WEST)
    for i in range(5):
        await cluster.put(WEST, NS, f"after-{i}", b"v")

    async def taken() -> bool:
        return coordinator.audit_heads.get(WEST).head.size >= before + 5

    await eventually(taken, 10, "west's heads after the restart on record")
    assert metric(cluster, WEST) == 0


async def recorded_covers(cluster: LocalCluster, region: str) -> bool:
    assert cluster.coordinator is not None
    node = cluster.nodes[region]
    try:
        return cluster.coordinator.audit_heads.get(region).head.size >= node.audit.size > 0
    except NotFound:  # no head exported yet
        return False


async def test_regression_a_rewound_log_never_replaces_the_head_that_proves_its_loss(
    pair: tuple[LocalCluster, Coordinator], tmp_path: Path
) -> None:
    cluster, coordinator = pair
    # Unchecked: the node does not know it runs an older copy (what the check at start
    # would find; tampering with the files would look the same).
    await rewind_west(cluster, tmp_path, rewind_check=False)
    west = cluster.nodes[WEST]
    assert west.epoch == 0
    on_record = coordinator.audit_heads.get(WEST).head
    assert west.audit.size < on_record.size  # the copy lost entries the head covers
    # The log grows well past the recorded size (before the fix, its head then replaced it).
    for i in range(on_record.size + 20):
        await cluster.put(WEST, NS, f"after-rewind-{i}", b"v")

    async def grown() -> bool:
        return west.audit.size > on_record.size

    await eventually(grown, 10, "west's log past the recorded size")
    # Every head offered from here on is longer than the one on record.
    refusals = metric(cluster, WEST)
    await cluster.put(WEST, NS, "one-more", b"v")

    async def refused_again() -> bool:
        return metric(cluster, WEST) > refusals

    await eventually(refused_again, 10, "a head longer than the one on record refused")
    assert coordinator.audit_heads.get(WEST).head == on_record
    # And the check says so: the log does not match the head on record.
    report = verify_log(west.audit.iter_all(), on_record, trusted_public_key=on_record.public_key)
    assert not report.ok and report.anchored_size == 0, report


async def test_a_node_found_rewound_starts_a_new_chain_and_the_old_one_stays_on_record(
    pair: tuple[LocalCluster, Coordinator], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, coordinator = pair
    await rewind_west(cluster, tmp_path)
    west = cluster.nodes[WEST]
    assert west.rewound and west.epoch > 0
    await cluster.put(WEST, NS, "after-rewind", b"v")

    async def new_chain() -> bool:
        return coordinator.audit_heads.get(WEST).incarnation == west.epoch

    await eventually(new_chain, 10, "west's new incarnation's chain on record")
    ((node_id, incarnation, _, _, _),) = coordinator._store.closed_audit_heads()
    assert (node_id, incarnation) == (WEST, 0)
    assert coordinator.metrics.audit_chains_closed.labels(region=WEST)._value.get() == 1
    head = coordinator.audit_heads.get(WEST).head
    report = verify_log(west.audit.iter_all(), head, trusted_public_key=head.public_key)
    assert report.ok and report.anchored_size == head.size, report
    # What `domicile audit verify` shows: the current chain's incarnation and the closed one,
    # read back from the coordinator's store after a restart as well.
    for restart in (False, True):
        if restart:
            await cluster.stop_coordinator()
            await cluster.start_coordinator()
        async with cluster.async_client() as client:
            record = await client.audit_record(WEST)
        assert record is not None and record.incarnation == west.epoch, restart
        ((closed),) = record.closed
        assert (closed.incarnation, closed.head.node_id, record.closed_omitted) == (0, WEST, 0)
        assert closed.closed_unix_ms >= closed.accepted_unix_ms > 0
    # The answer lists the newest closed chains only, and counts the rest.
    monkeypatch.setattr(servicer, "CLOSED_CHAINS_LISTED_MAX", 0)
    async with cluster.async_client() as client:
        record = await client.audit_record(WEST)
    assert record is not None and (record.closed, record.closed_omitted) == ((), 1)
