"""Every certificate the cluster must not accept, presented to the real daemons of a running
cluster over its mutual-TLS ports.

Most are refused at the TLS handshake, before gRPC sees a call: the caller gets UNAVAILABLE, and
no node can audit a caller it never got to know. Those cases assert what the trail can show:
no entry names the certificate's identity, no refusal was recorded at all, and the stored data
and the topology are exactly as they were. A certificate the handshake lets through (the CA
signed it) but that names no usable identity is refused at the first call with UNAUTHENTICATED,
counted and audited under the peer address, since there is no verified identity to name.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from domicile.errors import InvalidArgument
from domicile.identity import pki
from domicile.ports import free_port
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.daemon import Node
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark, coordinator_refusals, denial, nothing_names, refused, state
from tests.support.pki import odd_certificate
from tests.support.tls import CLUSTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
REGION = "eu-west-1"


def ca_pem(cluster: LocalCluster) -> bytes:
    assert cluster.pki is not None
    return (cluster.pki.directory / "ca.crt").read_bytes()


def raw_channel(address: str, trusted_ca: bytes, issued: pki.Issued | None) -> grpc.aio.Channel:
    """A channel built with gRPC alone, skipping every check Domicile's dialer makes before it
    sends a certificate: what a peer that does not use Domicile's code can present."""
    if issued is None:
        credentials = grpc.ssl_channel_credentials(trusted_ca)
    else:
        credentials = grpc.ssl_channel_credentials(trusted_ca, issued.key_pem, issued.certificate_pem)
    return grpc.aio.secure_channel(address, credentials)


async def put_with(cluster: LocalCluster, issued: pki.Issued | None, key: str) -> grpc.aio.AioRpcError:
    """A Put to eu-west-1 with `issued` as the client certificate; the error it fails with."""
    async with raw_channel(cluster.nodes[REGION].address, ca_pem(cluster), issued) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Put(spb.PutRequest(namespace="customers_eu", key=key, value=b"x"), timeout=5)
    return caught.value


async def assert_refused_at_the_handshake(
    cluster: LocalCluster, issued: pki.Issued | None, identity: str, key: str
) -> None:
    node = cluster.nodes[REGION]
    before, seq = state(cluster), await audit_mark(node)
    error = await put_with(cluster, issued, key)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert state(cluster) == before
    assert node.engine.get("customers_eu", key) is None
    await nothing_names(node, seq, identity)


def window(start_days: int, end_days: int) -> pki.Validity:
    now = dt.datetime.now(dt.UTC)
    return pki.Validity(now + dt.timedelta(days=start_days), now + dt.timedelta(days=end_days))


async def test_an_expired_client_certificate_is_refused_at_the_handshake(secure: LocalCluster) -> None:
    """No audit entry is possible: the handshake fails before any call exists."""
    assert secure.pki is not None
    issued = pki.issue_client(secure.pki.ca, "expired-app", validity=window(-10, -1))
    await assert_refused_at_the_handshake(secure, issued, "expired-app", "cert-expired")


async def test_a_not_yet_valid_client_certificate_is_refused_at_the_handshake(secure: LocalCluster) -> None:
    """No audit entry is possible: the handshake fails before any call exists."""
    assert secure.pki is not None
    issued = pki.issue_client(secure.pki.ca, "future-app", validity=window(1, 10))
    await assert_refused_at_the_handshake(secure, issued, "future-app", "cert-future")


async def test_a_client_certificate_of_another_ca_is_refused_at_the_handshake(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """Same cluster name, another CA: what an attacker who set up their own CA presents. No
    audit entry is possible: the handshake fails before any call exists."""
    other = pki.init_ca(tmp_path, CLUSTER)
    issued = pki.issue_client(other, "mallory")
    await assert_refused_at_the_handshake(secure, issued, "mallory", "cert-other-ca")


async def test_a_node_certificate_of_another_ca_is_refused_by_the_coordinator(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """Every port, not only the nodes': a foreign node certificate cannot register. The
    coordinator keeps no audit trail; it counts no refusal either, as no call reached it."""
    other = pki.init_ca(tmp_path, CLUSTER)
    issued = pki.issue_node(other, REGION, "eu-west-9")
    before = state(secure)
    async with raw_channel(secure.coordinator_address, ca_pem(secure), issued) as channel:
        request = cpb.RegisterNodeRequest(node_id="eu-west-9", region=REGION, address="10.6.6.6:1")
        await refused(
            cpb_grpc.CoordinatorServiceStub(channel).RegisterNode(request, timeout=5),
            grpc.StatusCode.UNAVAILABLE,
        )
    assert state(secure) == before
    assert coordinator_refusals(secure, "coordinator.RegisterNode", "unauthenticated") == 0


async def test_a_server_only_certificate_is_refused_as_a_client_at_the_handshake(
    secure: LocalCluster,
) -> None:
    """Wrong key usage: serverAuth without clientAuth. No audit entry is possible: the handshake
    fails before any call exists."""
    assert secure.pki is not None
    issued = odd_certificate(
        secure.pki.ca, uri=f"spiffe://{CLUSTER}/client/server-only", usages=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    await assert_refused_at_the_handshake(secure, issued, "server-only", "cert-server-only")


async def test_a_client_without_a_certificate_is_refused_at_the_handshake(secure: LocalCluster) -> None:
    """TLS without a client certificate: no identity at all, and no audit entry is possible."""
    await assert_refused_at_the_handshake(secure, None, "", "cert-none")


async def test_a_foreign_ca_bundled_into_the_callers_ca_file_gains_nothing(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """A CA file with a second CA in it: the caller trusts ours and its own, presents a
    certificate of its own CA; the node trusts its single CA, so the handshake fails (no audit
    entry is possible)."""
    other = pki.init_ca(tmp_path, CLUSTER)
    issued = pki.issue_client(other, "bundled")
    bundle = ca_pem(secure) + other.certificate_pem
    node = secure.nodes[REGION]
    before, seq = state(secure), await audit_mark(node)
    async with raw_channel(node.address, bundle, issued) as channel:
        request = spb.PutRequest(namespace="customers_eu", key="cert-bundled", value=b"x")
        await refused(
            spb_grpc.StorageNodeServiceStub(channel).Put(request, timeout=5), grpc.StatusCode.UNAVAILABLE
        )
    assert state(secure) == before
    await nothing_names(node, seq, "bundled")


async def test_a_node_whose_ca_file_holds_a_second_ca_does_not_start(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """gRPC would trust every CA of the file; the node refuses to serve with it at all."""
    assert secure.pki is not None
    other = pki.init_ca(tmp_path / "other", CLUSTER)
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    pki.issue_node(secure.pki.ca, "eu-central-1", "eu-central-7").write(tls_dir, "node-eu-central-7")
    (tls_dir / "ca.crt").write_bytes(ca_pem(secure) + other.certificate_pem)
    before = state(secure)
    config = secure.node_config(
        "eu-central-1",
        node_id="eu-central-7",
        listen=f"127.0.0.1:{free_port()}",
        data_dir=str(tmp_path / "data"),
        tls_dir=str(tls_dir),
    )
    with pytest.raises(InvalidArgument, match="holds 2 certificates"):
        await Node(config).start()
    assert state(secure) == before


async def assert_unauthenticated(cluster: LocalCluster, issued: pki.Issued, key: str, *texts: str) -> None:
    """Through the handshake (the CA signed it), refused at the first call; counted and audited
    under the peer address, the only identity there is."""
    node = cluster.nodes[REGION]
    before, seq = state(cluster), await audit_mark(node)
    error = await put_with(cluster, issued, key)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
    for text in texts:
        assert text in (error.details() or ""), error.details()
    assert state(cluster) == before
    entry = await denial(node, seq, "storage.Put")
    assert entry.principal.startswith("ipv4:127.0.0.1:") and entry.rule == "unauthenticated"
    assert texts[0] in entry.detail


async def test_a_san_less_client_certificate_is_unauthenticated_and_audited(secure: LocalCluster) -> None:
    assert secure.pki is not None
    issued = odd_certificate(secure.pki.ca, uri=None, dns=())
    await assert_unauthenticated(secure, issued, "cert-san-less", "has no subject alternative names")


async def test_a_certificate_without_a_spiffe_id_is_unauthenticated_and_audited(secure: LocalCluster) -> None:
    assert secure.pki is not None
    issued = odd_certificate(secure.pki.ca, uri=None, dns=("app.example.com",))
    await assert_unauthenticated(secure, issued, "cert-no-spiffe", "has no SPIFFE ID")


async def test_a_certificate_naming_another_cluster_is_unauthenticated_and_audited(
    secure: LocalCluster,
) -> None:
    assert secure.pki is not None
    issued = odd_certificate(secure.pki.ca, uri="spiffe://elsewhere/client/app")
    await assert_unauthenticated(secure, issued, "cert-other-cluster", "elsewhere")


async def test_a_client_certificate_claiming_the_node_role_is_unauthenticated_and_audited(
    secure: LocalCluster,
) -> None:
    """A client certificate presenting as a node through a role: only a node's SPIFFE ID makes
    a node, and `node` is no client role."""
    assert secure.pki is not None
    issued = odd_certificate(secure.pki.ca, uri=f"spiffe://{CLUSTER}/client/fake-node", units=("node",))
    await assert_unauthenticated(secure, issued, "cert-node-role", "unknown role 'node'")


async def test_a_node_certificate_carrying_client_roles_is_unauthenticated_and_audited(
    secure: LocalCluster,
) -> None:
    assert secure.pki is not None
    uri = f"spiffe://{CLUSTER}/region/eu-central-1/node/eu-central-1"
    issued = odd_certificate(
        secure.pki.ca,
        uri=uri,
        units=("dpo",),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    )
    await assert_unauthenticated(secure, issued, "cert-node-roles", "only clients have roles")
