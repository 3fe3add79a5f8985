"""Certificate-bound bearer tokens (RFC 8705): a token whose `cnf` names a certificate's
thumbprint is accepted only over that certificate, and the audit trail records both the token's
subject and the certificate it came over."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from jwt.algorithms import ECAlgorithm

from domicile.audit import AuditEntry
from domicile.client import AsyncClient
from domicile.errors import Unauthenticated
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tokens import thumbprint
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NAMESPACES = [{"name": "trades", "regions": [REGION], "classification": "financial", "owner": "trading"}]
ISSUER = "https://idp.example"
AUDIENCE = "domicile"
TOKEN_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    jwks = tmp_path / "jwks.json"
    public = json.loads(ECAlgorithm.to_jwk(TOKEN_KEY.public_key()))
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1"}]}))
    cluster = LocalCluster(tmp_path, [REGION], namespaces=NAMESPACES)
    tokens = {"jwks": str(jwks), "token_issuer": ISSUER, "token_audience": AUDIENCE}
    cluster.node_overrides = tokens
    cluster.coordinator_overrides = {**tokens, "jwks": jwks}
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def certificate_thumbprint(cluster: LocalCluster, name: str) -> str:
    assert cluster.pki is not None
    pem = cluster.pki.client(name, (Role.APP,)).cert.read_bytes()
    return thumbprint(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


def bound_token(subject: str, cnf: object) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "exp": now + 300, "roles": ["app"], "cnf": cnf}
    return jwt.encode(claims, TOKEN_KEY, algorithm="ES256", headers={"kid": "k1"})


def over(cluster: LocalCluster, name: str, token: str) -> AsyncClient:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client(name, (Role.APP,)))
    return AsyncClient(cluster.coordinator_address, dialer=dialer, token=token, deadline_s=5)


async def test_regression_a_token_bound_to_another_certificate_is_refused(cluster: LocalCluster) -> None:
    token = bound_token("trading", {"x5t#S256": certificate_thumbprint(cluster, "gateway")})
    async with over(cluster, "someone-else", token) as client:
        with pytest.raises(Unauthenticated, match="bound to another client certificate"):
            await client.put("trades", "stolen", b"1", region=REGION)
    assert cluster.nodes[REGION].engine.get("trades", "stolen") is None
    # Over the certificate it was issued for, it works, and both identities are audited.
    async with over(cluster, "gateway", token) as client:
        await client.put("trades", "t-1", b"1", region=REGION)
    node = cluster.nodes[REGION]
    await node.audit.flush()
    (put,) = [
        e
        for e in (AuditEntry.decode(r.body) for r in node.audit.iter_all())
        if e.action == "put" and e.key == "t-1"
    ]
    assert put.principal == "spiffe://domicile/client/trading via spiffe://domicile/client/gateway"


async def test_a_cnf_without_a_certificate_thumbprint_is_refused(cluster: LocalCluster) -> None:
    token = bound_token("trading", {"jkt": "some-key-thumbprint"})
    async with over(cluster, "gateway", token) as client:
        with pytest.raises(Unauthenticated, match='must carry "x5t#S256"'):
            await client.put("trades", "t-2", b"1", region=REGION)
