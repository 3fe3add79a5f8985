"""Regression: A node removed from the cluster (`domicile nodes remove`, Registry.remove) leaves its links'
and its anti-entropy pair's gauges behind on every remaining node, frozen at their last value.

Nothing in node/ ever removes a labelled child (no `.remove(` / `.clear()` on a metric), so:
- domicile_replication_connected{target=<removed>} stays at 0 forever, and the alert
  DomicileReplicationDisconnected (`domicile_replication_connected == 0` for 2m) fires on a
  healthy cluster until every remaining node restarts;
- domicile_antientropy_last_round_timestamp_seconds{peer=<removed>} stops moving, and
  DomicileAntiEntropyStale (`time() - (... > 0) > 1800` for 15m) fires 45 minutes later;
- the backlog, sync allowance and agreement gauges of the dead link keep showing on the
  dashboard (and DomicileConsistencyBelowTarget keeps the last ratio it saw)."""

from __future__ import annotations

from pathlib import Path

from domicile.topology import NodeHealth
from tests.support.cluster import LocalCluster, eventually

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1"]
GONE = "us-east-1"


def series_naming(registry, node_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    for family in registry.collect():
        for sample in family.samples:
            if node_id in (sample.labels.get("target"), sample.labels.get("peer")) and family.type == "gauge":
                found.append(f"{sample.name}{sample.labels} = {sample.value}")
    return found


async def test_removed_node_leaves_no_link_gauges_behind(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, REGIONS)
    cluster.node_overrides["antientropy_interval_s"] = 0.5
    await cluster.start_linked()
    try:
        west = cluster.nodes["eu-west-1"]

        async def rounds_done() -> bool:
            return bool(west.metrics.entropy_last_round.labels("eu-west-1", GONE)._value.get())

        await eventually(rounds_done, 20, "an anti-entropy round eu-west-1 <-> us-east-1")
        await cluster.stop_node(GONE)
        assert cluster.coordinator is not None
        registry = cluster.coordinator.registry

        async def down() -> bool:
            node = registry.topology().node(GONE)
            return node is not None and node.health is NodeHealth.DOWN

        await eventually(down, 15, "us-east-1 marked down")
        registry.remove(GONE)

        async def links_dropped() -> bool:
            return GONE not in west.replication.senders and west.view.topology.node(GONE) is None

        await eventually(links_dropped, 15, "eu-west-1 dropped its link to us-east-1")
        # Once the stopped sender has closed (3 s + 2 s at most) and a round ran with the rest.

        async def forgotten() -> bool:
            return series_naming(west.metrics.registry, GONE) == []

        await eventually(forgotten, 20, "eu-west-1 exports no gauge of the removed node")
    finally:
        await cluster.stop()
