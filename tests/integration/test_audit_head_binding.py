"""The key of a region's audit heads is the one the node's certificate binds (see
domicile/identity/audit_key.py), not whichever key the first exported head carries."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit import GENESIS, sign_head
from domicile.errors import FailedPrecondition
from domicile.identity import audit_key, pki
from domicile.identity.certificate import principal_from_certificate
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.audit import head_to_pb
from tests.support.cluster import LocalCluster
from tests.support.tls import CLUSTER

REGION = "eu-west-1"


@pytest.fixture
async def coordinator_only(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start_coordinator()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def export(cluster: LocalCluster, key: Ed25519PrivateKey) -> int:
    head = sign_head(
        key, region=REGION, node_id=REGION, size=0, head=GENESIS, time_ms=int(time.time() * 1000)
    )
    channel = cluster.channel_as_node(REGION, cluster.coordinator_address)
    try:
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        response = await stub.ExportAuditHead(cpb.ExportAuditHeadRequest(head=head_to_pb(head)), timeout=5)
        return int(response.accepted_size)
    finally:
        await channel.close()


async def test_regression_a_first_head_signed_by_a_key_the_certificate_does_not_bind_is_refused(
    coordinator_only: LocalCluster,
) -> None:
    cluster = coordinator_only
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await export(cluster, Ed25519PrivateKey.generate())
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"the certificate of node {REGION} binds the key" in (refused.value.details() or "")
    assert cluster.coordinator is not None
    assert cluster.coordinator.audit_heads.all() == {}
    # Positive control: the bound key (beside the certificate) is accepted as the first head.
    assert cluster.pki is not None
    bound = audit_key.load_key(audit_key.key_path(cluster.pki.node(REGION, REGION).cert))
    assert await export(cluster, bound) == 0
    assert cluster.coordinator.audit_heads.get(REGION).head.public_key == audit_key.public_bytes(bound)


def test_a_node_certificate_binds_its_audit_key_and_the_principal_carries_it(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path, CLUSTER)
    issued = pki.issue_node(ca, REGION, "n1")
    key = audit_key.load_key(Path(issued.write(tmp_path, "node-n1")[0]).with_name("node-n1.audit.key"))
    assert principal_from_certificate(issued.certificate_pem, CLUSTER).audit_key == audit_key.public_bytes(
        key
    )
    client = pki.issue_client(ca, "someone")
    assert principal_from_certificate(client.certificate_pem, CLUSTER).audit_key is None


async def test_a_node_whose_certificate_binds_a_key_it_does_not_hold_does_not_start(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    assert cluster.pki is not None
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / pki.CA_CERT).write_bytes(cluster.pki.ca.certificate_pem)
    elsewhere = audit_key.public_bytes(Ed25519PrivateKey.generate())
    pki.issue_node(cluster.pki.ca, REGION, REGION, audit_public_key=elsewhere).write(tls, f"node-{REGION}")
    with pytest.raises(FailedPrecondition) as refused:
        await cluster.start_node(REGION, tls_dir=str(tls))
    assert f"node-{REGION}.audit.key" in refused.value.message
    assert "holds the audit-head key" in refused.value.message


async def test_regression_a_node_that_fails_to_start_leaves_no_threads_behind(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    assert cluster.pki is not None
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / pki.CA_CERT).write_bytes(cluster.pki.ca.certificate_pem)
    elsewhere = audit_key.public_bytes(Ed25519PrivateKey.generate())
    pki.issue_node(cluster.pki.ca, REGION, REGION, audit_public_key=elsewhere).write(tls, f"node-{REGION}")

    def offload_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("domicile-offload")}

    before = offload_threads()
    with pytest.raises(FailedPrecondition):
        await cluster.start_node(REGION, tls_dir=str(tls))
    assert offload_threads() - before == set()
