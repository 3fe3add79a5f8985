"""Per-link sync modes: a batch link ships in bulk, at most once per interval, while a realtime
link of the same source ships each write as it comes (the control)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from tests.support.cluster import NAMESPACES, LocalCluster, eventually

INTERVAL_S = 2
BATCH_TO_CENTRAL = {"mode": "batch", "interval_s": INTERVAL_S, "to": ["eu-central-1"]}
WRITES = 12


async def test_a_batch_link_ships_in_bulk_and_a_realtime_link_each_write(tmp_path: Path) -> None:
    namespaces = [
        {**ns, "sync": BATCH_TO_CENTRAL}
        if "eu-central-1" in ns["regions"] or ns["regions"] == "global"
        else ns
        for ns in NAMESPACES
    ]
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1", "us-east-1"], namespaces=namespaces)
    await cluster.start_linked()
    try:
        source = cluster.nodes["eu-west-1"]
        batch = source.replication.senders["eu-central-1"]
        realtime = source.replication.senders["us-east-1"]
        assert batch.cadence.spec.mode == "batch" and realtime.cadence.spec.mode == "realtime"
        metric = source.metrics.registry.get_sample_value
        labels = {"source": "eu-west-1", "target": "eu-central-1"}
        assert metric("domicile_replication_sync_allowance_seconds", labels) == 2
        assert metric("domicile_replication_sync_allowance_seconds", {**labels, "target": "us-east-1"}) == 0
        turns_before = (batch.cadence.turns, realtime.cadence.turns)
        keys = [f"k{i}" for i in range(WRITES)]
        started = time.monotonic()
        for key in keys:
            await cluster.put("eu-west-1", "instruments", key, b"v")
            # Each write waits until the realtime link has shipped it: one turn per write there.
            await eventually(lambda k=key: _has(cluster, "us-east-1", k), what=f"{key} at us-east-1")
        await eventually(
            lambda: _all(cluster, "eu-central-1", keys), 10.0, "every write at eu-central-1 by the batch link"
        )
        elapsed = time.monotonic() - started
        batch_turns = batch.cadence.turns - turns_before[0]
        realtime_turns = realtime.cadence.turns - turns_before[1]
        print(f"turns: batch {batch_turns}, realtime {realtime_turns} for {WRITES} writes")
        # A turn at the first write, then at most one per interval: however slow the machine,
        # the batch link took fewer turns than the realtime one, which took one per write.
        assert batch_turns <= 1 + math.ceil(elapsed / INTERVAL_S)
        assert batch_turns < realtime_turns
    finally:
        await cluster.stop()


async def _has(cluster: LocalCluster, region: str, key: str) -> bool:
    return cluster.nodes[region].engine.get("instruments", key) is not None


async def _all(cluster: LocalCluster, region: str, keys: list[str]) -> bool:
    await asyncio.sleep(0)
    return all(cluster.nodes[region].engine.get("instruments", k) is not None for k in keys)
