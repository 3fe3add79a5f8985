"""Regression: Anti-entropy's caller check holds the certificate's node id against the topology, but not its
region: a CA-issued certificate for node id "eu-central-1" in region us-east-1 (the impostor the
coordinator already refuses to register or heartbeat, tests/security/test_rogue_nodes.py) is
answered by eu-west-1 as if it were the real eu-central-1, and is sent EU personal data
(EntropyStates returns the record values) that the policy keeps out of the US."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from tests.support.cluster import LocalCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


def impostor(cluster: LocalCluster, directory: Path, region: str, node_id: str) -> Dialer:
    assert cluster.pki is not None
    pki.issue_node(cluster.pki.ca, region, node_id).write(directory, "impostor")
    files = TlsFiles(cluster.pki.directory / "ca.crt", directory / "impostor.crt", directory / "impostor.key")
    return Dialer.mutual_tls(files)


async def test_a_same_id_certificate_of_another_region_may_not_pull_records(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await cluster.put(
        "eu-west-1", "customers_eu", "alice", b"EU personal data", subject_id="s-1", subject_jurisdiction="DE"
    )
    west = cluster.nodes["eu-west-1"]
    assert west.entropy is not None
    request = rpb.EntropyStatesRequest(
        namespace="customers_eu", caller_node_id="eu-central-1", keys=["alice"]
    )
    async with impostor(cluster, tmp_path, "us-east-1", "eu-central-1").channel(west.address) as channel:
        stub = rpb_grpc.ReplicationServiceStub(channel)
        try:
            answer = await stub.EntropyStates(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            return
    values = [m.version.value for m in answer.mutations]
    pytest.fail(
        "spiffe://.../region/us-east-1/node/eu-central-1 was answered as node eu-central-1 "
        f"and sent the EU-only record's values: {values!r}"
    )
