"""The HLC across a restart: a node whose wall clock was set back while it was down still
stamps its next write above every timestamp it issued before."""

from __future__ import annotations

from pathlib import Path

from domicile.hlc import HybridClock, physical_ms, wall_ms
from tests.support.cluster import LocalCluster

HOUR_MS = 3_600_000


async def test_a_node_restarted_with_its_wall_clock_set_back_stamps_above_its_last_write(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    try:
        issued = [(await cluster.put("eu-west-1", "prefs_eu", f"k{i}", b"v")).version.hlc for i in range(3)]
        await cluster.stop_node("eu-west-1")
        behind = HybridClock(lambda: wall_ms() - HOUR_MS)
        await cluster.start_node("eu-west-1", hlc=behind)
        after = (await cluster.put("eu-west-1", "prefs_eu", "k-after", b"v")).version.hlc
        assert after > max(issued), (
            f"the write after the restart got HLC {after} (physical {physical_ms(after)} ms), below "
            f"the last one issued before it {max(issued)} (physical {physical_ms(max(issued))} ms)"
        )
    finally:
        await cluster.stop()


async def test_a_node_whose_ceiling_file_was_lost_resumes_above_its_last_write(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    try:
        last = (await cluster.put("eu-west-1", "prefs_eu", "k", b"v")).version.hlc
        await cluster.stop_node("eu-west-1")
        (tmp_path / "eu-west-1" / "hlc.ceiling").unlink()
        await cluster.start_node("eu-west-1", hlc=HybridClock(lambda: wall_ms() - HOUR_MS))
        after = (await cluster.put("eu-west-1", "prefs_eu", "k", b"w")).version.hlc
        assert after > last
    finally:
        await cluster.stop()
