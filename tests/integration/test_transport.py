"""Every daemon port is mutual TLS unless --insecure says otherwise: a plaintext client and a
client of another CA are refused at the handshake; plaintext is logged at every start."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.client import AsyncClient
from domicile.errors import InvalidArgument, Unavailable
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.config import NodeConfig, parse_args
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_the_session_client_reads_and_writes_over_mutual_tls(secure: LocalCluster) -> None:
    async with secure.async_client(deadline_s=5.0) as client:
        await client.put("prefs_eu", "k", b"v")
        assert list((await client.get("prefs_eu", "k")).values) == [b"v"]


async def test_a_plaintext_client_cannot_talk_to_a_tls_cluster(secure: LocalCluster) -> None:
    async with AsyncClient(secure.coordinator_address, insecure=True, deadline_s=1.0) as client:
        with pytest.raises(Unavailable):
            await client.topology()
    # The same port answers the cluster's own clients.
    status = await secure.stub(REGION).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
    assert status.region == REGION


async def test_a_client_of_another_ca_is_refused_at_the_handshake(
    secure: LocalCluster, tmp_path: Path
) -> None:
    other = pki.init_ca(tmp_path / "other", "domicile")
    pki.issue_client(other, "mallory", [Role.DPO]).write(tmp_path / "other", "client-mallory")
    files = TlsFiles.in_directory(tmp_path / "other", "client-mallory")
    async with AsyncClient(secure.coordinator_address, tls=files, deadline_s=1.0) as client:
        with pytest.raises(Unavailable):
            await client.topology()


async def test_an_insecure_cluster_works_and_says_so_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="domicile.identity")
    cluster = LocalCluster(tmp_path, [REGION], insecure=True)
    await cluster.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(m.startswith(f"node {REGION} runs with --insecure: plaintext gRPC") for m in warnings)
        assert any(m.startswith("the coordinator runs with --insecure") for m in warnings)
        async with cluster.async_client(deadline_s=5.0) as client:
            await client.put("prefs_eu", "k", b"v")
    finally:
        await cluster.stop()


def test_a_node_needs_tls_files_or_an_explicit_insecure(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"no TLS files for node eu-west-1: pass --tls-dir DIR \(holding ca.crt, node-eu-west-1.crt",
    ):
        NodeConfig(region=REGION)
    with pytest.raises(InvalidArgument, match="--insecure and TLS files exclude each other"):
        NodeConfig(region=REGION, insecure=True, tls_dir=str(tmp_path))
    with pytest.raises(InvalidArgument, match="--cert given without --ca, --key"):
        NodeConfig(region=REGION, tls_cert=str(tmp_path / "n.crt"))
    assert parse_args(["--region", REGION, "--insecure"]).insecure
    config = tmp_path / "node.yaml"
    config.write_text(f"region: {REGION}\ntls_dir: {tmp_path}\n")
    assert parse_args(["--config", str(config)]).tls_files() == TlsFiles.in_directory(
        tmp_path, "node-eu-west-1"
    )


async def test_a_node_with_bad_tls_files_does_not_start(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start_coordinator()
    try:
        with pytest.raises(InvalidArgument, match="does not exist"):
            await cluster.start_node(REGION, tls_dir=str(tmp_path / "nowhere"))
    finally:
        await cluster.stop()


def test_sdk_refuses_to_guess_its_transport() -> None:
    with pytest.raises(InvalidArgument, match="plaintext needs an explicit --insecure"):
        AsyncClient("127.0.0.1:1")
    with pytest.raises(InvalidArgument, match="never sent in plaintext"):
        AsyncClient("127.0.0.1:1", insecure=True, token="a.b.c")
    with pytest.raises(InvalidArgument, match="either dialer or tls"):
        AsyncClient("127.0.0.1:1", dialer=Dialer.plaintext(), insecure=True)


def test_bearer_token_settings_come_together(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--jwks needs --token-issuer and --token-audience"):
        NodeConfig(region=REGION, insecure=True, jwks=str(tmp_path / "jwks.json"))
    with pytest.raises(InvalidArgument, match="--token-issuer and --token-audience need --jwks"):
        NodeConfig(region=REGION, insecure=True, token_issuer="https://idp.example")


async def test_a_node_with_an_unreadable_policy_file_does_not_start(tmp_path: Path) -> None:
    policies = tmp_path / "policies.cedar"
    policies.write_text('@id("broken")\npermit (principal, action, resource) when { nonsense };\n')
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start_coordinator()
    try:
        with pytest.raises(InvalidArgument, match=str(policies)):
            await cluster.start_node(REGION, authz_policies=str(policies))
    finally:
        await cluster.stop()


async def test_a_node_takes_new_certificates_without_a_restart(tmp_path: Path) -> None:
    """The node's files are replaced by ones of another CA while it runs: the next connection
    uses them, so clients of the new CA get in and clients of the old one no longer do."""
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start_coordinator()
    own = tmp_path / "node-tls"
    old = pki.init_ca(own, "domicile")
    pki.issue_node(old, REGION, REGION).write(own, f"node-{REGION}")
    pki.issue_client(old, "tester", [Role.OPERATOR]).write(own, "client-old")
    try:
        node = await cluster.start_node(REGION, tls_dir=str(own))
        request = spb.GetNodeStatusRequest()
        old_client = Dialer.mutual_tls(TlsFiles.in_directory(own, "client-old"))
        async with old_client.channel(node.address) as channel:
            assert (
                await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(request, timeout=5)
            ).region == REGION

        staging = tmp_path / "new-ca"
        new = pki.init_ca(staging, "domicile")
        pki.issue_client(new, "tester", [Role.OPERATOR]).write(staging, "client-new")
        issued = pki.issue_node(new, REGION, REGION)
        # As an operator rotates: the CA certificate, then the key and certificate (write()
        # replaces each file atomically, key first).
        (own / "ca.crt").write_bytes(new.certificate_pem)
        issued.write(own, f"node-{REGION}")

        new_client = Dialer.mutual_tls(TlsFiles.in_directory(staging, "client-new"))
        async with new_client.channel(node.address) as channel:
            assert (
                await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(request, timeout=5)
            ).region == REGION
        # The old client (its dialer keeps the files it had, which no longer verify) is shut out.
        async with old_client.channel(node.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await cluster.stop()
