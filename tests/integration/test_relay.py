"""Relay of a dead origin's writes: a write its origin shipped to one replica only before it
died reaches the other replicas in scope without waiting for the anti-entropy interval, because
the coordinator marking the origin down makes every other node run its rounds at once."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.cluster import LocalCluster, eventually

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1"]
# The regular rounds are an hour apart: only the relay can bring the write within the bound.
HOUR_S = 3600.0
RELAY_BOUND_S = 15.0


async def test_a_write_acknowledged_by_an_origin_that_died_reaches_every_replica_in_scope(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, REGIONS, proxies=True)
    cluster.node_overrides["antientropy_interval_s"] = HOUR_S
    await cluster.start_linked()
    try:
        # Streams into eu-central-1 are cut: us-east-1's write reaches eu-west-1 only.
        cluster.proxies["eu-central-1"].partition()
        await cluster.put("us-east-1", "instruments", "XS0000000001", b"acknowledged, then the origin died")

        async def at(region: str) -> bool:
            return bool(await cluster.values(region, "instruments", "XS0000000001"))

        await eventually(lambda: at("eu-west-1"), 10, "the write at eu-west-1")
        await cluster.stop_node("us-east-1")  # the origin is gone for good
        died = time.monotonic()
        cluster.proxies["eu-central-1"].heal()
        await eventually(lambda: at("eu-central-1"), RELAY_BOUND_S, "the write relayed to eu-central-1")
        print(f"relayed {time.monotonic() - died:.1f} s after the origin died")
        assert await cluster.values("eu-central-1", "instruments", "XS0000000001") == {
            b"acknowledged, then the origin died"
        }
    finally:
        await cluster.stop()
