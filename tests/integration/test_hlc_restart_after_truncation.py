"""Regression: The HLC must never go backwards across a restart (node/clock_file.py). A node resumes above the
stored ceiling and, for "a data directory that lost its ceiling file while the store survived"
(Node._persist_clock), above the HLC of its last change-log entry, read with
read_log(last_lsn - 1, 1). But once every link has acknowledged everything, truncation deletes
the log through its last entry (the normal state of an idle node): that read finds nothing, and
the entry's HLC, which the engine keeps as LogStart.hlc, is not consulted. The clock then resumes
from the wall clock alone; with the wall clock set back (an NTP step), the next write gets an HLC
below the node's earlier writes.

Control: the same restart with the log not truncated resumes above the last write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.hlc import HybridClock, wall_ms
from node.clock_file import CEILING_FILE
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "prefs_eu"
SET_BACK_MS = 10_000


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    cluster.node_overrides.update(antientropy_interval_s=0, changelog_truncate_interval_s=0)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def hlc_of(cluster: LocalCluster, key: str) -> int:
    state = await asyncio.to_thread(cluster.nodes[REGION].engine.get, NS, key)
    assert state is not None
    return max(v.hlc for v in state.versions)


@pytest.mark.parametrize("truncated", [True, False], ids=["log-truncated", "control-log-kept"])
async def test_the_hlc_does_not_go_back_across_a_restart_without_its_ceiling_file(
    single: LocalCluster, truncated: bool
) -> None:
    node = single.nodes[REGION]
    await single.put(REGION, NS, "before", b"v1")
    before = await hlc_of(single, "before")
    if truncated:
        start = await node.truncator.pass_once()
        assert start.lsn == await asyncio.to_thread(node.engine.last_lsn)
        assert await asyncio.to_thread(node.engine.read_log, 0, 10) == []
        assert start.hlc == before  # the store still knows the last entry's HLC

    await single.stop_node(REGION)
    (single.root / REGION / CEILING_FILE).unlink()  # the data directory lost it; the store survived
    # The wall clock is set back while the node is down.
    clock = HybridClock(lambda: wall_ms() - SET_BACK_MS)
    await single.start_node(REGION, hlc=clock)
    await single.put(REGION, NS, "after", b"v2")
    after = await hlc_of(single, "after")
    assert after > before, (
        f"the write after the restart got HLC {after}, {(before - after) >> 16} ms below the write "
        f"before it ({before}): the node's clock went backwards"
    )
