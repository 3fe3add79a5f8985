"""Mutual TLS end to end: real grpc.aio servers on free ports, the standard health service and a
one-method service that answers with the caller's principal, all over credentials from
domicile.identity.credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from domicile.errors import DomicileError, InvalidArgument
from domicile.identity import pki
from domicile.identity.credentials import Dialer, ServerSecurity
from domicile.identity.files import PRIVATE_MODE, PUBLIC_MODE, write_atomically
from domicile.identity.peer import peer_principal
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from tests.support.pki import odd_certificate

WHOAMI = "/domicile.test.Whoami/Get"


def _identity(data: bytes) -> bytes:
    return data


def whoami_handler(cluster: str) -> grpc.GenericRpcHandler:
    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            principal = peer_principal(context, cluster)
        except DomicileError as error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
        body = {"uri": principal.uri, "kind": principal.kind, "roles": sorted(principal.roles)}
        return json.dumps(body).encode()

    handler = grpc.unary_unary_rpc_method_handler(
        get, request_deserializer=_identity, response_serializer=_identity
    )
    return grpc.method_handlers_generic_handler("domicile.test.Whoami", {"Get": handler})


@dataclass
class Pki:
    ca: pki.ClusterCa
    directory: Path

    def write(self, issued: pki.Issued, stem: str, directory: Path | None = None) -> TlsFiles:
        target = directory or self.directory
        issued.write(target, stem)
        if target != self.directory:
            (target / "ca.crt").write_bytes(self.ca.certificate_pem)
        return TlsFiles.in_directory(target, stem)


@pytest.fixture
def cluster_pki(tmp_path) -> Pki:
    return Pki(pki.init_ca(tmp_path / "pki", "prod"), tmp_path / "pki")


@dataclass
class Server:
    server: grpc.aio.Server
    port: int
    files: TlsFiles

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"


async def start_server(files: TlsFiles) -> Server:
    security = ServerSecurity.mutual_tls(files)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    assert security.cluster is not None
    server.add_generic_rpc_handlers((whoami_handler(security.cluster),))
    port = security.add_port(server, "127.0.0.1:0")
    await server.start()
    return Server(server, port, files)


@pytest.fixture
async def node_server(cluster_pki) -> AsyncIterator[Server]:
    files = cluster_pki.write(pki.issue_node(cluster_pki.ca, "eu-west-1", "n1"), "node-n1")
    server = await start_server(files)
    try:
        yield server
    finally:
        await server.server.stop(None)


async def health_check(channel: grpc.aio.Channel) -> None:
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def whoami(channel: grpc.aio.Channel) -> dict[str, object]:
    async with channel:
        call = channel.unary_unary(WHOAMI, request_serializer=_identity, response_deserializer=_identity)
        return dict(json.loads(await call(b"", timeout=5)))


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_check(channel)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    return caught.value


def client_files(cluster_pki: Pki, tmp_path: Path, issued: pki.Issued, stem: str = "client") -> TlsFiles:
    """Client files written without the checks TlsFiles.load would make, to reach the handshake."""
    return cluster_pki.write(issued, stem, tmp_path / stem)


class UncheckedDialer(Dialer):
    """A dialer that skips the start-up checks, standing in for a peer that does not use Domicile's
    code: the server must refuse what the client would not have sent."""

    def __init__(self, files: TlsFiles) -> None:
        super().__init__(None)
        self._credentials = grpc.ssl_channel_credentials(
            files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
        )

    def credentials(self):
        return self._credentials


async def test_a_valid_client_connects_and_the_server_sees_its_principal(cluster_pki, node_server, tmp_path):
    files = client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "alice", [Role.DPO]))
    dialer = Dialer.mutual_tls(files)
    await health_check(dialer.channel(node_server.target))
    seen = await whoami(dialer.channel(node_server.target))
    assert seen == {"uri": "spiffe://prod/client/alice", "kind": "client", "roles": ["dpo"]}


async def test_a_node_dialing_a_node_is_seen_as_that_node(cluster_pki, node_server, tmp_path):
    files = client_files(cluster_pki, tmp_path, pki.issue_node(cluster_pki.ca, "us-east-1", "n2"), "node-n2")
    seen = await whoami(
        Dialer.mutual_tls(files).channel(node_server.target, ExpectedPeer.node("eu-west-1", "n1"))
    )
    assert seen["uri"] == "spiffe://prod/region/us-east-1/node/n2"


async def test_the_dialer_insists_on_the_expected_node(cluster_pki, node_server, tmp_path):
    dialer = Dialer.mutual_tls(client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "a")))
    await health_check(dialer.channel(node_server.target, ExpectedPeer.node("eu-west-1", "n1")))
    await refused(dialer.channel(node_server.target, ExpectedPeer.node("eu-west-1", "n9")))
    await refused(dialer.channel(node_server.target, ExpectedPeer.coordinator()))


async def test_a_server_of_another_ca_is_refused_by_the_dialer(cluster_pki, tmp_path):
    other = Pki(pki.init_ca(tmp_path / "other", "prod"), tmp_path / "other")
    server = await start_server(other.write(pki.issue_node(other.ca, "eu-west-1", "n1"), "node-n1"))
    try:
        dialer = Dialer.mutual_tls(client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "a")))
        await refused(dialer.channel(server.target))
    finally:
        await server.server.stop(None)


async def test_a_server_only_certificate_cannot_be_used_as_a_client(cluster_pki, tmp_path):
    issued = odd_certificate(
        cluster_pki.ca, uri="spiffe://prod/client/alice", usages=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    with pytest.raises(InvalidArgument, match=r"may not be used by a client \(no clientAuth usage\)"):
        Dialer.mutual_tls(client_files(cluster_pki, tmp_path, issued))
    # A peer that sends it anyway is refused at the handshake: tests/security.


async def start_unchecked_server(files: TlsFiles) -> tuple[grpc.aio.Server, int]:
    """A server that skips the start-up checks, standing in for a peer that does not use Domicile's
    code: the dialer must refuse what the server would not have been allowed to serve."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())], files.ca.read_bytes(), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


async def test_a_client_only_certificate_cannot_be_used_as_a_server(cluster_pki, tmp_path):
    issued = odd_certificate(
        cluster_pki.ca, uri="spiffe://prod/coordinator", usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    files = cluster_pki.write(issued, "coordinator")
    with pytest.raises(InvalidArgument, match=r"may not be used by a server \(no serverAuth usage\)"):
        ServerSecurity.mutual_tls(files)
    server, port = await start_unchecked_server(files)
    try:
        dialer = Dialer.mutual_tls(client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "a")))
        await refused(dialer.channel(f"localhost:{port}"))
    finally:
        await server.stop(None)


async def test_a_san_less_server_certificate_is_refused_at_the_handshake(cluster_pki, tmp_path):
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    files = cluster_pki.write(odd_certificate(cluster_pki.ca, uri=None, dns=(), usages=usages), "odd")
    with pytest.raises(InvalidArgument, match="has no subject alternative names"):
        ServerSecurity.mutual_tls(files)
    server, port = await start_unchecked_server(files)
    try:
        dialer = Dialer.mutual_tls(client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "a")))
        await refused(dialer.channel(f"localhost:{port}"))
    finally:
        await server.stop(None)


def served_certificate(port: int, files: TlsFiles) -> x509.Certificate:
    """The certificate the server presents to a new connection, read with the standard library."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_replaced_server_files_serve_new_connections_without_a_restart(
    cluster_pki, node_server, tmp_path
):
    client = client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "alice"))
    before = await asyncio.to_thread(served_certificate, node_server.port, client)
    dialer = Dialer.mutual_tls(client)
    await health_check(dialer.channel(node_server.target, ExpectedPeer.node("eu-west-1", "n1")))

    # The node is re-issued in place.
    pki.issue_node(cluster_pki.ca, "eu-west-1", "n1").write(cluster_pki.directory, "node-n1")
    after = await asyncio.to_thread(served_certificate, node_server.port, client)
    assert after.serial_number != before.serial_number
    assert after.public_bytes(Encoding.PEM) == node_server.files.cert.read_bytes()
    await health_check(dialer.channel(node_server.target, ExpectedPeer.node("eu-west-1", "n1")))


async def test_a_half_replaced_pair_keeps_the_previous_certificate(
    cluster_pki, node_server, tmp_path, caplog
):
    client = client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "alice"))
    before = await asyncio.to_thread(served_certificate, node_server.port, client)
    fresh = pki.issue_node(cluster_pki.ca, "eu-west-1", "n1")
    # Only the key: the pair does not match until the certificate follows.
    write_atomically(node_server.files.key, fresh.key_pem, PRIVATE_MODE, overwrite=True)
    with caplog.at_level(logging.WARNING, logger="domicile.identity"):
        during = await asyncio.to_thread(served_certificate, node_server.port, client)
    assert during.serial_number == before.serial_number
    assert "does not match private key" in caplog.text
    write_atomically(node_server.files.cert, fresh.certificate_pem, PUBLIC_MODE, overwrite=True)
    after = await asyncio.to_thread(served_certificate, node_server.port, client)
    assert after.serial_number != before.serial_number


async def test_a_dialer_presents_replaced_client_files_on_new_channels(cluster_pki, node_server, tmp_path):
    files = client_files(cluster_pki, tmp_path, pki.issue_client(cluster_pki.ca, "alice"))
    dialer = Dialer.mutual_tls(files)
    assert (await whoami(dialer.channel(node_server.target)))["roles"] == []
    pki.issue_client(cluster_pki.ca, "alice", [Role.AUDITOR]).write(files.cert.parent, "client")
    assert (await whoami(dialer.channel(node_server.target)))["roles"] == ["auditor"]


async def test_plaintext_logs_a_warning_every_time_and_has_no_principal(caplog):
    security = ServerSecurity.plaintext()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((whoami_handler("prod"),))
    with caplog.at_level(logging.WARNING, logger="domicile.identity"):
        port = security.add_port(server, "127.0.0.1:0")
        await server.start()
        try:
            dialer = Dialer.plaintext()
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await whoami(dialer.channel(f"127.0.0.1:{port}"))
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert caught.value.details() == "the connection is not TLS, so the peer is not authenticated"
        finally:
            await server.stop(None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"plaintext: development only; server port 127.0.0.1:{port} has no TLS and no authentication",
        f"plaintext: development only; channel to 127.0.0.1:{port} has no TLS and no authentication",
        f"plaintext: development only; channel to 127.0.0.1:{port} has no TLS and no authentication",
    ]
