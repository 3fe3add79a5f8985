from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster
from tests.support.rogue import ROGUE, ROGUE_REGION


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes replicating to each other."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def pair_and_rogue(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes replicating to each other, and the node ROGUE linked to both."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1", ROGUE_REGION])
    try:
        await cluster.start_coordinator()
        await cluster.start_node("eu-west-1")
        await cluster.start_node("eu-central-1")
        await cluster.start_node(ROGUE_REGION, node_id=ROGUE)
        await cluster.wait_linked()
        yield cluster
    finally:
        await cluster.stop()
