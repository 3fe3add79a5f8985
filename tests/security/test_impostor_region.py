"""Regressions: a CA-issued certificate naming node eu-central-1 in region us-east-1 (the impostor
the coordinator already refuses to register) was answered as eu-central-1 by anti-entropy, which
sent it the opened values of an EU-only namespace, and by a replication stream, which stored its
forged writes under eu-central-1's name: both compared only the certificate's node id with the
topology, never its region."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.tls_files import TlsFiles
from domicile.model import writer_id
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from tests.support.cluster import LocalCluster
from tests.support.rogue import mutation


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


async def test_a_same_id_certificate_of_another_region_may_not_replicate_as_that_node(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    west, central = cluster.nodes["eu-west-1"], cluster.nodes["eu-central-1"]
    source = writer_id("eu-central-1", central.epoch)
    hello = rpb.ReplicationHello(
        source_node_id="eu-central-1",
        source_region="us-east-1",  # what the impostor's certificate says
        source_epoch=central.epoch,
        target_node_id="eu-west-1",
        topology_revision=west.view.topology.revision,
    )
    async with impostor(cluster, tmp_path, "us-east-1", "eu-central-1").channel(west.address) as channel:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=10)
        await call.write(rpb.ReplicateRequest(hello=hello))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            return
        assert first.WhichOneof("kind") == "ready", first
        position = first.ready.resume_after_lsn
        forged = mutation(source, position + 1, "forged-by-us-east-1", b"from the US impostor")
        await call.write(
            rpb.ReplicateRequest(batch=rpb.ReplicationBatch(mutations=[forged], through_lsn=position + 1))
        )
        ack = await call.read()
        await call.done_writing()
    stored = west.engine.get("instruments", "forged-by-us-east-1")
    pytest.fail(
        "spiffe://.../region/us-east-1/node/eu-central-1 opened a replication stream to eu-west-1 "
        f"as node eu-central-1 (ready at {position}); ack {ack.ack}; forged record stored: "
        f"{stored is not None}"
    )
