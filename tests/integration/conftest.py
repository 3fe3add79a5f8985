from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from domicile.s3_server import SeaweedServer
from tests.support.cluster import LocalCluster
from tests.support.s3 import s3_server


@pytest.fixture
async def eu_node(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node, in eu-west-1, with its coordinator."""
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the session (it takes seconds to start); each test uses its own bucket."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
