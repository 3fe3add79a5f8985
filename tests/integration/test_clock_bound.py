"""Bounded clocks on the writing side: a node whose clock runs further ahead of the
coordinator's than max_clock_drift_ms refuses writes (peers would refuse their timestamps),
says why, shows it in its metrics, and writes again once its clock is right."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from domicile.hlc import HybridClock, physical_ms, wall_ms
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster, eventually

TEN_MINUTES_MS = 600_000


def gauge(cluster: LocalCluster, region: str, name: str) -> float | None:
    node = cluster.nodes[region]
    return node.metrics.registry.get_sample_value(name, {"node": region})


async def registered(cluster: LocalCluster, region: str) -> None:
    async def connected() -> bool:
        return cluster.nodes[region].link.connected

    await eventually(connected, 10, f"{region} registered")


async def test_a_node_whose_clock_jumps_ahead_refuses_writes_until_it_is_right(tmp_path: Path) -> None:
    offset_ms = [0]
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    await cluster.stop_node("eu-west-1")
    await cluster.start_node("eu-west-1", hlc=HybridClock(lambda: wall_ms() + offset_ms[0]))
    try:
        before = await cluster.put("eu-west-1", "prefs_eu", "k", b"before")
        assert gauge(cluster, "eu-west-1", "domicile_clock_refusing_writes") == 0

        offset_ms[0] = TEN_MINUTES_MS
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.put("eu-west-1", "prefs_eu", "k", b"while ahead")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        details = refused.value.details() or ""
        assert "s ahead of the coordinator's" in details and "max_clock_drift_ms" in details, details
        with pytest.raises(grpc.aio.AioRpcError) as refused_delete:
            await cluster.stub("eu-west-1").Delete(
                spb.DeleteRequest(namespace="prefs_eu", key="k"), timeout=5
            )
        assert refused_delete.value.code() == grpc.StatusCode.UNAVAILABLE
        # Nothing was written: the key holds what it held.
        assert await cluster.values("eu-west-1", "prefs_eu", "k") == {b"before"}

        # The next heartbeat's sample shows it in the metrics (the alert's series).
        async def metric_says_refusing() -> bool:
            return gauge(cluster, "eu-west-1", "domicile_clock_refusing_writes") == 1

        await eventually(metric_says_refusing, 5, "the refusing gauge at 1")
        ahead = gauge(cluster, "eu-west-1", "domicile_clock_ahead_seconds")
        assert ahead is not None and ahead > 0.9 * TEN_MINUTES_MS / 1000

        offset_ms[0] = 0
        after = await cluster.put("eu-west-1", "prefs_eu", "k", b"after")
        assert after.version.hlc > before.version.hlc
        assert physical_ms(after.version.hlc) <= wall_ms() + 5000

        async def metric_says_writing() -> bool:
            return gauge(cluster, "eu-west-1", "domicile_clock_refusing_writes") == 0

        await eventually(metric_says_writing, 5, "the refusing gauge back at 0")
    finally:
        await cluster.stop()


async def test_a_node_started_with_its_clock_ahead_refuses_its_first_write(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    await registered(cluster, "eu-west-1")
    await cluster.stop_node("eu-west-1")
    # The check at start reads the coordinator's clock before the node serves anything.
    await cluster.start_node("eu-west-1", hlc=HybridClock(lambda: wall_ms() + TEN_MINUTES_MS))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.put("eu-west-1", "prefs_eu", "first", b"v")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await cluster.values("eu-west-1", "prefs_eu", "first") == set()
    finally:
        await cluster.stop()
