"""Authentication and authorization on every RPC, end to end: the caller is the verified
certificate or bearer token (never client-declared metadata), the Cedar policies decide each
call, refusals are PERMISSION_DENIED naming the action and what would allow it, and a node counts
and audits each refusal with the verified identity."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from domicile.audit import AuditEntry
from domicile.client import AsyncClient
from domicile.errors import PermissionDenied, Unauthenticated
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.daemon import Node
from tests.support.cluster import LocalCluster
from tests.support.pki import odd_certificate

REGION = "eu-west-1"
NAMESPACES = [
    {
        "name": "trades",
        "regions": [REGION, "eu-central-1"],
        "classification": "financial",
        "owner": "trading",
        "purposes": ["trade_execution", "settlement"],
    },
    {"name": "customers", "regions": [REGION, "eu-central-1"], "classification": "personal", "owner": "crm"},
    # No owner given: the test cluster makes the tests' own client its owner.
    {"name": "notes", "regions": [REGION], "conflict_mode": "lww"},
]
ISSUER = "https://idp.example"
AUDIENCE = "domicile"
TOKEN_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    jwks = tmp_path / "jwks.json"
    public = json.loads(ECAlgorithm.to_jwk(TOKEN_KEY.public_key()))
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1"}]}))
    cluster = LocalCluster(tmp_path, [REGION, "eu-central-1"], namespaces=NAMESPACES)
    tokens = {"jwks": str(jwks), "token_issuer": ISSUER, "token_audience": AUDIENCE}
    cluster.node_overrides = tokens
    cluster.coordinator_overrides = {**tokens, "jwks": jwks}
    await cluster.start()
    await cluster.wait_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def app(cluster: LocalCluster, name: str, *, purpose: str = "", token: str | None = None) -> AsyncClient:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client(name, (Role.APP,)))
    return AsyncClient(cluster.coordinator_address, dialer=dialer, purpose=purpose, token=token, deadline_s=5)


def token(subject: str, roles: list[str], **changes: object) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300, "roles": roles}
    claims.update(changes)
    return jwt.encode(claims, TOKEN_KEY, algorithm="ES256", headers={"kid": "k1"})


async def entries(node: Node, action: str) -> list[AuditEntry]:
    await node.audit.flush()
    found = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in found if e.action == action]


def refusals(node: Node, action: str, reason: str) -> float:
    labels = {"action": action, "reason": reason}
    return node.metrics.registry.get_sample_value("domicile_authz_refusals_total", labels) or 0.0


async def test_an_app_uses_its_own_namespace_for_a_declared_purpose(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    async with app(cluster, "trading", purpose="trade_execution") as client:
        await client.put("trades", "t-1", b"100 XAU", region=REGION)
        assert list((await client.get("trades", "t-1", region=REGION)).values) == [b"100 XAU"]
    (put,) = [e for e in await entries(node, "put") if e.key == "t-1"]
    # The verified certificate, not anything the client declared.
    assert put.principal == "spiffe://domicile/client/trading"


async def test_an_undeclared_purpose_is_refused_and_audited(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    for purpose in ("", "marketing"):
        async with app(cluster, "trading", purpose=purpose) as client:
            with pytest.raises(PermissionDenied) as refused:
                await client.put("trades", "t-2", b"x", region=REGION)
        message = refused.value.message
        assert (
            "may not call storage.Put on namespace trades at eu-west-1: refused by purpose-limitation"
            in message
        )
        assert "namespace trades may be used for: trade_execution, settlement" in message
    assert node.engine.get("trades", "t-2") is None
    assert refusals(node, "storage.Put", "policy") == 2
    denied = await entries(node, "access_denied")
    assert [e.principal for e in denied] == ["spiffe://domicile/client/trading"] * 2
    assert all(e.namespace == "trades" and e.decision == "refuse" and e.rule == "policy" for e in denied)
    assert "purpose-limitation" in denied[0].detail


async def test_an_app_may_not_touch_another_owners_namespace(cluster: LocalCluster) -> None:
    async with app(cluster, "trading", purpose="trade_execution") as client:
        with pytest.raises(PermissionDenied) as refused:
            await client.get("customers", "c-1", region=REGION)
        assert "may not call storage.Get on namespace customers at eu-west-1" in refused.value.message
        assert "(namespace customers is owned by 'crm')" in refused.value.message
        # Exporting a subject is a DPO's call, and the refusal says so.
        with pytest.raises(PermissionDenied, match="allowed for roles: dpo"):
            await client.export_subject_region(REGION, "c-1")


async def test_a_bearer_token_names_the_caller(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    async with app(cluster, "gateway", purpose="settlement", token=token("trading", ["app"])) as client:
        await client.put("trades", "t-3", b"1", region=REGION)
    (put,) = [e for e in await entries(node, "put") if e.key == "t-3"]
    assert put.principal == "spiffe://domicile/client/trading"
    expired = token("trading", ["app"], exp=int(time.time()) - 3600)
    async with app(cluster, "gateway", purpose="settlement", token=expired) as client:
        with pytest.raises(Unauthenticated, match="token expired"):
            await client.put("trades", "t-4", b"1", region=REGION)
    # Refused where the client first calls: the coordinator, for the topology it routes by.
    assert cluster.coordinator is not None
    counted = cluster.coordinator.metrics.registry.get_sample_value(
        "domicile_coordinator_authz_refusals_total",
        {"action": "coordinator.GetTopology", "reason": "unauthenticated"},
    )
    assert counted == 1
    # And by a node called directly, which audits it with the peer address (no identity).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.stub(REGION).Get(
            spb.GetRequest(namespace="notes", key="k"),
            metadata=(("authorization", f"Bearer {expired}"),),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "token expired"
    assert refusals(node, "storage.Get", "unauthenticated") == 1
    (denied,) = await entries(node, "access_denied")
    assert denied.principal.startswith("ipv4:127.0.0.1:") and denied.rule == "unauthenticated"


async def test_declared_principal_metadata_is_not_an_identity(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    stub = cluster.stub(REGION)
    request = spb.PutRequest(namespace="notes", key="t-5", value=b"1")
    metadata = (("domicile-principal", "trading"),)
    await stub.Put(request, metadata=metadata, timeout=5)
    (put,) = [e for e in await entries(node, "put") if e.key == "t-5"]
    assert put.principal == "spiffe://domicile/client/tester"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Put(request, metadata=(("domicile-purpose", "Not A Purpose"),), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "domicile-purpose metadata: invalid purpose" in (bad.value.details() or "")


async def test_the_coordinator_takes_a_node_call_only_from_that_node(cluster: LocalCluster) -> None:
    async with cluster.channel_as_node(REGION, cluster.coordinator_address) as channel:
        stub = cpb_grpc.CoordinatorServiceStub(channel)
        cases = [
            stub.RegisterNode(
                cpb.RegisterNodeRequest(node_id="eu-central-1", region="eu-central-1", address="10.9.9.9:1"),
                timeout=5,
            ),
            stub.Heartbeat(cpb.HeartbeatRequest(node_id="eu-central-1"), timeout=5),
        ]
        for call in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only by node eu-central-1" in (refused.value.details() or "")
    async with cluster.coordinator_channel() as channel:
        # A client with every client role is still no node.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cpb_grpc.CoordinatorServiceStub(channel).Heartbeat(
                cpb.HeartbeatRequest(node_id=REGION), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert cluster.coordinator is not None
    address = cluster.coordinator.registry.topology().node("eu-central-1")
    assert address is not None and address.address != "10.9.9.9:1"
    counted = cluster.coordinator.metrics.registry.get_sample_value(
        "domicile_coordinator_authz_refusals_total",
        {"action": "coordinator.RegisterNode", "reason": "wrong_peer"},
    )
    assert counted == 1


async def test_replication_is_taken_only_from_the_linked_source_it_claims(cluster: LocalCluster) -> None:
    target = cluster.nodes[REGION]
    hello = rpb.ReplicationHello(
        source_node_id="eu-central-1", source_region="eu-central-1", target_node_id=REGION
    )
    # A client certificate, a node claiming to be another, and a node of the cluster with no link.
    attempts = [
        (
            cluster.channel(target.address),
            "may not call replication.Replicate at region eu-west-1; allowed for roles: node",
        ),
        (cluster.channel_as_node("us-east-1", target.address), "may not replicate as node 'eu-central-1'"),
    ]
    for channel, text in attempts:
        async with channel:
            call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
            await call.write(rpb.ReplicateRequest(hello=hello))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert text in (refused.value.details() or ""), refused.value.details()
    async with cluster.channel_as_node("us-east-1", target.address) as channel:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
        unlinked = rpb.ReplicationHello(
            source_node_id="us-east-1", source_region="us-east-1", target_node_id=REGION
        )
        await call.write(rpb.ReplicateRequest(hello=unlinked))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node us-east-1 holds no replication link to eu-west-1" in (refused.value.details() or "")
    assert refusals(target, "replication.Replicate", "policy") == 1
    assert refusals(target, "replication.Replicate", "wrong_peer") == 2
    denied = await entries(target, "access_denied")
    assert {e.principal for e in denied} == {
        "spiffe://domicile/client/tester",
        "spiffe://domicile/region/us-east-1/node/us-east-1",
    }


async def test_node_status_needs_a_role_that_allows_it(cluster: LocalCluster) -> None:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client("dpo-only", (Role.DPO,)))
    async with dialer.channel(cluster.nodes[REGION].address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(
                spb.GetNodeStatusRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "allowed for roles: app, auditor, operator" in (refused.value.details() or "")


async def test_a_cluster_certificate_without_a_spiffe_id_is_unauthenticated(cluster: LocalCluster) -> None:
    # gRPC completes the handshake for any certificate of the CA; the first call refuses it.
    assert cluster.pki is not None
    odd = odd_certificate(cluster.pki.ca, uri=None)
    ca_pem = (cluster.pki.directory / "ca.crt").read_bytes()
    channel = grpc.aio.secure_channel(
        cluster.nodes[REGION].address, grpc.ssl_channel_credentials(ca_pem, odd.key_pem, odd.certificate_pem)
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(
                spb.GetNodeStatusRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "has no SPIFFE ID" in (refused.value.details() or "")
    assert refusals(cluster.nodes[REGION], "storage.GetNodeStatus", "unauthenticated") == 1
