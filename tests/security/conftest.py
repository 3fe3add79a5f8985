from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes replicating to each other."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()
