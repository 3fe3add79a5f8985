"""A running daemon takes replaced certificates of its own identity (rotation), and refuses
replacements that name another identity: it keeps its certificate, logs an ERROR and counts it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domicile.identity import pki
from domicile.identity.principal import ExpectedPeer
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"


async def serving_as(cluster: LocalCluster, node_id: str) -> bool:
    channel = cluster.channel(cluster.nodes[REGION].address, ExpectedPeer.node(REGION, node_id))
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def test_regression_replaced_files_naming_another_identity_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    assert cluster.pki is not None
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / pki.CA_CERT).write_bytes(cluster.pki.ca.certificate_pem)
    pki.issue_node(cluster.pki.ca, REGION, REGION).write(tls, f"node-{REGION}")
    await cluster.start_coordinator()
    node = await cluster.start_node(REGION, tls_dir=str(tls))
    try:
        assert await serving_as(cluster, REGION)
        # Someone replaces the files with those of another node of the region.
        pki.issue_node(cluster.pki.ca, REGION, "other").write(tls, f"node-{REGION}")
        with caplog.at_level(logging.ERROR, logger="domicile.identity"):
            assert await serving_as(cluster, REGION)
        assert node.metrics.tls_identity_changes_refused._value.get() == 1
        assert "changed to another identity" in caplog.text
        assert f"spiffe://domicile/region/{REGION}/node/other" in caplog.text
        # A re-issue of its own identity is taken again (rotation still works).
        pki.issue_node(cluster.pki.ca, REGION, REGION).write(tls, f"node-{REGION}")
        assert await serving_as(cluster, REGION)
        assert node.metrics.tls_identity_changes_refused._value.get() == 1
    finally:
        await cluster.stop()
