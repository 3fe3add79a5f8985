"""A stopping node anchors its audit log's last head at the coordinator: the entries of its last
moments, its stop's among them, are covered by an exported head at once, not only after a next
start that a node stopped for good never has."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, eventually

REGION = "eu-west-1"
# Longer than the test: the exporter's own task sends its first head and then none.
QUIET_EXPORTER_S = 3600.0


async def coordinator_head_size(cluster: LocalCluster) -> int:
    assert cluster.coordinator is not None and cluster.coordinator.audit_heads is not None
    return cluster.coordinator.audit_heads.get(REGION, REGION).head.size


async def stop_after_unexported_writes(cluster: LocalCluster) -> int:
    """Writes after the exporter's last head, stops the node, and returns its log's final size."""
    node = cluster.nodes[REGION]
    node.exporter.interval_s = QUIET_EXPORTER_S
    await cluster.put(REGION, "prefs_eu", "first", b"v")
    await node.audit.flush()

    async def anchored() -> bool:
        return node.exporter.exported_size > 0

    await eventually(anchored, what="the exporter's first head")
    for i in range(5):
        await cluster.put(REGION, "prefs_eu", f"k{i}", b"v")
    await node.audit.flush()
    assert node.exporter.exported_size < node.audit.size, "the writes after the first head were exported"
    await cluster.stop_node(REGION)
    return node.audit.size


async def test_a_stopping_node_exports_its_closing_audit_head(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        final = await stop_after_unexported_writes(cluster)
        assert await coordinator_head_size(cluster) == final
    finally:
        await cluster.stop()


async def test_without_the_closing_export_the_last_entries_are_unanchored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Negative control: what a stop did before, leaving the closing head to the next start.
    async def not_exported(self: object) -> None:
        return None

    monkeypatch.setattr("node.daemon.Node._export_closing_head", not_exported)
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        final = await stop_after_unexported_writes(cluster)
        assert await coordinator_head_size(cluster) < final
    finally:
        await cluster.stop()
