"""Regression: A client certificate that expires while its connection is open keeps working on that
connection: the gate checks the revocation list on every call (so a revoked certificate is refused
"on connections already open too"), but never the certificate's validity, which only the TLS
handshake looked at. A gRPC connection lives as long as the client keeps it busy, so a
certificate issued for a short time (a contractor's, a CI job's) outlives its expiry for as long
as the holder keeps one connection open."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster

LIFETIME = dt.timedelta(seconds=4)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, ["eu-west-1"])
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


async def test_a_certificate_that_expired_is_refused_on_its_open_connection(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    assert cluster.pki is not None
    now = dt.datetime.now(dt.UTC)
    validity = pki.Validity(now - dt.timedelta(minutes=5), now + LIFETIME)
    pki.issue_client(cluster.pki.ca, "shortlived", [Role.APP], validity=validity).write(tmp_path, "client")
    files = TlsFiles(cluster.pki.directory / "ca.crt", tmp_path / "client.crt", tmp_path / "client.key")
    await cluster.put("eu-west-1", "instruments", "gold", b"XAU")
    west = cluster.nodes["eu-west-1"]
    request = spb.GetRequest(namespace="instruments", key="gold")
    async with Dialer.mutual_tls(files).channel(
        west.address, ExpectedPeer.node("eu-west-1", "eu-west-1")
    ) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        first = await stub.Get(request, timeout=5)
        assert first.found  # while the certificate is valid
        # Past the certificate's notAfter (the wall clock, as the handshake would check it).
        past = validity.not_after + dt.timedelta(seconds=1) - dt.datetime.now(dt.UTC)
        await asyncio.sleep(max(0.0, past.total_seconds()))
        try:
            later = await stub.Get(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            return
    pytest.fail(
        f"a call made after the client certificate expired ({validity.not_after:%H:%M:%S} UTC) "
        f"was served on the connection opened before: found={later.found}"
    )
