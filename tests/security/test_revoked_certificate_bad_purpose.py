"""Regression: Gate.authenticate validates the declared purpose (`domicile-purpose` metadata) before it looks
at the caller's certificate. A call made with a revoked certificate (or by anyone) that carries a
malformed purpose is answered INVALID_ARGUMENT instead of UNAUTHENTICATED, and the use of the
revoked key is neither counted (domicile_authz_refusals_total{reason="revoked"}, which the
DomicileRevokedCertificateUsed alert pages on) nor audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from domicile.identity import revocation
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster, eventually
from tests.support.tls import SessionPki

REGION = "eu-west-1"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    # A CA of its own: the revocation list written here must not reach other tests' daemons.
    c = LocalCluster(tmp_path, [REGION], pki=SessionPki())
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_a_revoked_certificate_is_refused_unauthenticated_whatever_purpose_it_declares(
    cluster: LocalCluster,
) -> None:
    assert cluster.pki is not None
    node = cluster.nodes[REGION]
    files = cluster.pki.client("leaver", (Role.APP,))
    serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    ca = cluster.pki.ca
    revocation.revoke(ca.certificate, ca.key, cluster.pki.directory, [serial])

    async def in_force() -> bool:
        return serial in node.security.revoked()

    await eventually(in_force, 10.0, "the revocation in force at the node")
    before = (
        node.metrics.registry.get_sample_value(
            "domicile_authz_refusals_total", {"action": "storage.Get", "reason": "revoked"}
        )
        or 0.0
    )
    async with Dialer.mutual_tls(files).channel(node.address, ExpectedPeer.node(REGION, REGION)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spb_grpc.StorageNodeServiceStub(channel).Get(
                spb.GetRequest(namespace="instruments", key="k"),
                metadata=(("domicile-purpose", "Not-A-Purpose"),),
                timeout=5,
            )
    after = (
        node.metrics.registry.get_sample_value(
            "domicile_authz_refusals_total", {"action": "storage.Get", "reason": "revoked"}
        )
        or 0.0
    )
    assert (refused.value.code(), after - before) == (grpc.StatusCode.UNAUTHENTICATED, 1.0), (
        refused.value.details()
    )
