"""A daemon refuses to start on a port another daemon listens on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordinator.daemon import Coordinator
from domicile.errors import Unavailable
from tests.support.cluster import LocalCluster

REGIONS = ["eu-west-1", "eu-central-1"]


async def test_regression_a_second_daemon_on_a_port_in_use_fails_to_start(tmp_path: Path) -> None:
    # gRPC sets SO_REUSEPORT by default: a second daemon on a port in use bound it too and the
    # kernel split the connections between the two, so calls meant for one node reached the
    # other. Now the second daemon fails to start, saying which address it could not take.
    cluster = LocalCluster(tmp_path, REGIONS)
    await cluster.start()
    try:
        taken = cluster.nodes["eu-west-1"].address
        with pytest.raises(Unavailable, match=f"cannot listen on {taken}"):
            await cluster.start_node("eu-central-1", listen=taken, data_dir=str(tmp_path / "second"))
        assert cluster.coordinator is not None
        second = Coordinator(
            dataclasses.replace(cluster.coordinator.config, data_dir=tmp_path / "coordinator-2")
        )
        with pytest.raises(Unavailable, match=f"cannot listen on {cluster.coordinator_address}"):
            await second.start()
    finally:
        await cluster.stop()
