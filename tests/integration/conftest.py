from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster


@pytest.fixture
async def eu_pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes and one US node, each behind a controllable proxy."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1", "us-east-1"], proxies=True)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def four(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, ["us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1"])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()
