"""Regressions for what a security review of the identity seams found: a CA file with a second
CA, a server certificate with a wildcard or an identity name as an extra host, an audit head that
names no node, and erasure orders and legal holds shown to every client in the topology."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from domicile.errors import InvalidArgument
from domicile.identity import audit_key, pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.audit import head_to_pb
from tests.support.cluster import LocalCluster


def test_regression_a_ca_file_with_a_second_certificate_is_refused(tmp_path: Path) -> None:
    """gRPC trusts every certificate of the CA file, but the cluster was read from the first: a
    foreign CA appended to it could mint any identity under this cluster's name."""
    ours = pki.init_ca(tmp_path / "ours", "prod")
    pki.init_ca(tmp_path / "theirs", "prod")
    pki.issue_client(ours, "app1", (Role.APP,)).write(tmp_path / "ours", "client-app1")
    files = TlsFiles.in_directory(tmp_path / "ours", "client-app1")
    files.load()  # one CA: fine
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(files.ca.read_bytes() + (tmp_path / "theirs" / "ca.crt").read_bytes())
    with pytest.raises(InvalidArgument, match="holds 2 certificates"):
        TlsFiles(bundle, files.cert, files.key).load()


@pytest.mark.parametrize("host", ["*.example.com", "coordinator.prod.domicile.invalid", "x.DOMICILE.invalid"])
def test_regression_a_wildcard_or_identity_name_is_no_extra_host(tmp_path: Path, host: str) -> None:
    """Dialers check a server by the DNS name made from its identity; an extra host like that
    would let a node's certificate pass as the coordinator or as another node."""
    ca = pki.init_ca(tmp_path, "prod")
    with pytest.raises(InvalidArgument, match="wildcard or a name reserved"):
        pki.issue_node(ca, "eu-west-1", "n1", hosts=("localhost", host))
    with pytest.raises(InvalidArgument, match="neither an IP address nor a DNS name"):
        pki.parse_hosts(["localhost\n"])
    assert pki.issue_node(ca, "eu-west-1", "n1", hosts=("localhost", "10.0.0.1", "db.example.com"))


@pytest.fixture
async def cluster(tmp_path: Path):
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_regression_an_audit_head_naming_no_node_is_refused(cluster: LocalCluster) -> None:
    """With an empty node id, any node of the region could export the region's first head and
    pin its own key for the region."""
    node = cluster.nodes["eu-central-1"]
    # A head as a rogue node of the region would send it: validly signed, naming no node.
    unnamed = dataclasses.replace(node.audit.head(), node_id="")
    assert cluster.pki is not None
    key = audit_key.load_key(audit_key.key_path(cluster.pki.node("eu-central-1", "eu-central-1").cert))
    unnamed = dataclasses.replace(unnamed, signature=key.sign(unnamed.signed_message()))
    assert unnamed.signature_valid()
    message = head_to_pb(unnamed)
    channel = cluster.channel_as_node("eu-central-1", cluster.coordinator_address)
    try:
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExportAuditHead(cpb.ExportAuditHeadRequest(head=message), timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "names no node" in (refused.value.details() or "")
    finally:
        await channel.close()


async def test_regression_only_nodes_see_subject_orders_and_the_topology_names_no_subject(
    cluster: LocalCluster,
) -> None:
    """The topology carried erasure orders and legal holds, which name data subjects; an app
    needs the topology only to route. They now travel on WatchSubjectOrders, which only nodes
    may call; the topology carries them for no one (a DPO lists holds and requests)."""
    async with cluster.async_client() as dpo:
        await dpo.place_hold("subject", subject_id="s-held", reason="litigation 42")
    assert cluster.pki is not None
    pki_ = cluster.pki

    async def as_peer(files: TlsFiles) -> tuple[cpb.Topology, list[str] | grpc.StatusCode]:
        channel = Dialer.mutual_tls(files).channel(cluster.coordinator_address)
        try:
            stub = cpb_grpc.CoordinatorServiceStub(channel)
            if files.cert.name.startswith("node-"):
                # A node does not read the topology, it watches it.
                async for first in stub.WatchTopology(cpb.WatchTopologyRequest(), timeout=5):
                    topology = first.topology
                    break
            else:
                topology = (await stub.GetTopology(cpb.GetTopologyRequest(), timeout=5)).topology
            try:
                async for page in stub.WatchSubjectOrders(cpb.WatchSubjectOrdersRequest(), timeout=5):
                    if page.last:
                        return topology, [h.subject_id for h in page.holds]
            except grpc.aio.AioRpcError as exc:
                return topology, exc.code()
            raise AssertionError("the orders stream ended before a whole set")
        finally:
            await channel.close()

    node_topology, node_orders = await as_peer(pki_.node("eu-central-1", "eu-central-1"))
    assert node_orders == ["s-held"]
    assert list(node_topology.holds) == [] and list(node_topology.erasures) == []
    for roles, name in [
        ((Role.DPO,), "dpo-1"),
        ((Role.APP,), "app-1"),
        ((Role.OPERATOR, Role.AUDITOR), "ops-1"),
    ]:
        topology, refused = await as_peer(pki_.client(name, roles))
        assert refused == grpc.StatusCode.PERMISSION_DENIED, name
        assert list(topology.holds) == [] and list(topology.erasures) == []
        assert [n.node_id for n in topology.nodes]  # still enough to route


async def test_regression_a_heartbeat_is_taken_only_from_the_region_the_node_registered_in(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """Heartbeats were checked by node id only: a certificate for the same node id in another
    region could keep a dead node marked up."""
    assert cluster.pki is not None
    # Issued directly: the session's certificate cache knows one certificate per node id.
    pki.issue_node(cluster.pki.ca, "us-east-1", "eu-west-1").write(tmp_path, "node-impostor")
    impostor = TlsFiles(
        cluster.pki.directory / "ca.crt", tmp_path / "node-impostor.crt", tmp_path / "node-impostor.key"
    )
    other_region = Dialer.mutual_tls(impostor).channel(cluster.coordinator_address)
    same = cluster.channel_as_node("eu-west-1", cluster.coordinator_address, node_id="eu-west-1")
    try:
        request = cpb.HeartbeatRequest(node_id="eu-west-1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cpb_grpc.CoordinatorServiceStub(other_region).Heartbeat(request, timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        await cpb_grpc.CoordinatorServiceStub(same).Heartbeat(request, timeout=5)
    finally:
        await other_region.close()
        await same.close()


async def test_a_node_is_sent_only_its_own_regions_backup_section(cluster: LocalCluster) -> None:
    """The topology carries the backup section of the watching node's region; a node (or any
    client) asking for another region's is refused."""
    assert cluster.pki is not None
    for files, region in [
        (cluster.pki.node("eu-central-1", "eu-central-1"), "eu-west-1"),
        (cluster.pki.client("ops-1", (Role.OPERATOR,)), "eu-west-1"),
    ]:
        channel = Dialer.mutual_tls(files).channel(cluster.coordinator_address)
        try:
            stub = cpb_grpc.CoordinatorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.WatchTopology(cpb.WatchTopologyRequest(region=region), timeout=5):
                    break
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only a node of region eu-west-1" in (refused.value.details() or "")
        finally:
            await channel.close()
