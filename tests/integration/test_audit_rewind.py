"""A node's audit log put back from an older copy of its data directory has lost entries its
head on record covers. The coordinator keeps that head: a later, longer head is taken only with
the proof that the log extends it (the hash of the log's entry at the recorded size), which a
rewound log cannot give, so `domicile audit verify` keeps reporting the loss.

Found in a torture run: the rewound node's next heads were refused while its log was shorter,
then, once it grew past the recorded size, one replaced the head that proved the loss and the
check passed: whether a run's audit check failed depended on how much the node wrote after."""

from __future__ import annotations

from pathlib import Path

from domicile.audit import verify_log
from tests.integration.test_rewind import CENTRAL, NS, WEST, rewind_west
from tests.support.cluster import LocalCluster, eventually


def metric(cluster: LocalCluster, region: str) -> float:
    return cluster.nodes[region].metrics.audit_export_refused._value.get()  # type: ignore[no-any-return]


async def test_a_restarted_node_proves_its_log_extends_the_head_on_record(tmp_path: Path) -> None:
    # The positive control: a plain restart's log extends the head on record, and its next
    # heads are taken (its first one after proving the recorded size from its own log).
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL])
    await cluster.start_linked()
    try:
        coordinator = cluster.coordinator
        assert coordinator is not None
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
    finally:
        await cluster.stop()


async def recorded_covers(cluster: LocalCluster, region: str) -> bool:
    assert cluster.coordinator is not None
    node = cluster.nodes[region]
    try:
        return cluster.coordinator.audit_heads.get(region).head.size >= node.audit.size > 0
    except Exception:
        return False


async def test_regression_a_rewound_log_never_replaces_the_head_that_proves_its_loss(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL])
    await cluster.start_linked()
    try:
        coordinator = cluster.coordinator
        assert coordinator is not None
        await rewind_west(cluster, tmp_path)
        west = cluster.nodes[WEST]
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
    finally:
        await cluster.stop()
