"""A node on the SQLite engine counts the WAL checkpoints it makes between commits, of its store
and of its audit log (domicile.sqlite_checkpoint), and reports the size of each WAL."""

from __future__ import annotations

from pathlib import Path

from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually

# A Put changes four or five rows of the store and adds one entry to the audit log: 160 make a
# checkpoint of 128 changed rows due in both.
PUTS = 160


def metric(node: Node, name: str, labels: dict[str, str]) -> float | None:
    return node.metrics.registry.get_sample_value(name, labels)


async def test_checkpoints_of_the_store_and_the_audit_log_are_counted(tmp_path: Path) -> None:
    cluster = await LocalCluster(tmp_path, ["eu-west-1"]).start()
    try:
        node = cluster.nodes["eu-west-1"]
        for i in range(PUTS):
            await cluster.put("eu-west-1", "instruments", f"k-{i}", b"v" * 100)

        async def counted() -> bool:
            return all(
                (metric(node, "domicile_sqlite_checkpoints_total", {"file": f, "outcome": "done"}) or 0) > 0
                for f in ("store", "audit")
            )

        await eventually(counted, what="checkpoints of the store and the audit log counted")
        for file in ("store", "audit"):
            assert metric(node, "domicile_sqlite_checkpoints_total", {"file": file, "outcome": "failed"}) == 0
            took = metric(node, "domicile_sqlite_checkpoint_seconds_count", {"file": file})
            assert took is not None and took >= 1

        # The gauges' refresh asks each checkpointer for its WAL's size.
        async def sized() -> bool:
            return (metric(node, "domicile_sqlite_wal_bytes", {"file": "store"}) or 0) > 0

        await eventually(sized, what="the store's WAL size reported")
        assert metric(node, "domicile_sqlite_wal_bytes", {"file": "audit"}) is not None
    finally:
        await cluster.stop()
