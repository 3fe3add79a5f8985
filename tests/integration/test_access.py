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
from domicile.errors import Unauthenticated
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from tests.support.cluster import LocalCluster

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


async def test_a_bearer_token_names_the_caller(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    async with app(cluster, "gateway", purpose="settlement", token=token("trading", ["app"])) as client:
        await client.put("trades", "t-3", b"1", region=REGION)
    (put,) = [e for e in await entries(node, "put") if e.key == "t-3"]
    # The token's subject acts; the certificate it came over is recorded beside it.
    assert put.principal == "spiffe://domicile/client/trading via spiffe://domicile/client/gateway"
    expired = token("trading", ["app"], exp=int(time.time()) - 3600)
    async with app(cluster, "gateway", purpose="settlement", token=expired) as client:
        with pytest.raises(Unauthenticated, match="token expired"):
            await client.put("trades", "t-4", b"1", region=REGION)
    # The SDK reports the refusal as Unauthenticated; tests/security covers every bad token.


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
