"""Every bearer token a node must refuse, sent to a running node over its mutual-TLS port.

Each case sends a Put that the same token, made right, would be allowed (the control case shows
that): so the refusal is the token's fault alone. A refused token is UNAUTHENTICATED with a
message that says what was wrong, nothing is stored, and the node audits the refusal under the
identity it did verify: the client certificate that carried the token.
"""

from __future__ import annotations

import time

import grpc
import pytest

from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.bearer import (
    OTHER_KEY,
    bearer,
    hmac_with_public_key,
    token,
    unsigned_token,
)
from tests.support.cluster import LocalCluster
from tests.support.negatives import (
    audit_mark,
    coordinator_refusals,
    denial,
    entries_since,
    refused,
    replicated,
    state,
)
from tests.support.pki import odd_certificate
from tests.support.tls import CLUSTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
REGION = "eu-west-1"
# The namespace the token's subject owns: a valid token may write it.
NS = "customers"
OWNER = "crm"


async def put_with_token(cluster: LocalCluster, value: str, key: str, name: str) -> spb.PutResponse:
    """A Put to eu-west-1 carrying `value` as its bearer token, over a connection with the client
    certificate `name` (no roles of its own: only the token could allow the call)."""
    assert cluster.pki is not None
    async with cluster.pki.dialer(name, ()).channel(cluster.nodes[REGION].address) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        request = spb.PutRequest(namespace=NS, key=key, value=b"x")
        response: spb.PutResponse = await stub.Put(request, metadata=bearer(value), timeout=5)
        return response


async def assert_token_refused(cluster: LocalCluster, value: str, name: str, *texts: str) -> None:
    node = cluster.nodes[REGION]
    before, seq = state(cluster), await audit_mark(node)
    key = f"token-{name}"
    details = await refused(
        put_with_token(cluster, value, key, name), grpc.StatusCode.UNAUTHENTICATED, *texts
    )
    assert value not in details
    assert state(cluster) == before
    assert node.engine.get(NS, key) is None
    entry = await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/{name}")
    assert entry.rule == "unauthenticated" and texts[0] in entry.detail
    assert value not in entry.detail


async def test_a_valid_token_is_accepted_so_each_refusal_below_is_the_tokens_fault(
    secure: LocalCluster,
) -> None:
    """The control: the same call with a good token stores the record under the token's subject."""
    node = secure.nodes[REGION]
    seq = await audit_mark(node)
    await put_with_token(secure, token(OWNER, ["app"]), "token-control", "carrier-ok")
    await replicated(secure, NS, "token-control")
    (put,) = [e for e in await entries_since(node, seq) if e.action == "put"]
    # The token's subject acts; the certificate that carried it is recorded beside it.
    assert put.principal == f"spiffe://{CLUSTER}/client/{OWNER} via spiffe://{CLUSTER}/client/carrier-ok"


async def test_an_expired_token_is_refused(secure: LocalCluster) -> None:
    expired = token(OWNER, ["app"], exp=int(time.time()) - 3600)
    await assert_token_refused(secure, expired, "carrier-expired", "token expired")


async def test_a_token_not_valid_yet_is_refused(secure: LocalCluster) -> None:
    later = int(time.time()) + 3600
    early = token(OWNER, ["app"], nbf=later, exp=later + 300)
    await assert_token_refused(secure, early, "carrier-nbf", "token not valid yet")


async def test_a_token_of_another_issuer_is_refused(secure: LocalCluster) -> None:
    foreign = token(OWNER, ["app"], iss="https://evil.example")
    await assert_token_refused(secure, foreign, "carrier-iss", "token is from another issuer")


async def test_a_token_for_another_audience_is_refused(secure: LocalCluster) -> None:
    elsewhere = token(OWNER, ["app"], aud="another-service")
    await assert_token_refused(secure, elsewhere, "carrier-aud", "token is for another audience")


async def test_an_unsigned_alg_none_token_is_refused(secure: LocalCluster) -> None:
    await assert_token_refused(
        secure, unsigned_token(OWNER, ["app"]), "carrier-none", "unsigned token (alg none)"
    )


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(secure: LocalCluster) -> None:
    """Algorithm confusion: HS256 is no accepted algorithm, and the key is bound to ES256."""
    confused = hmac_with_public_key(OWNER, ["app"])
    await assert_token_refused(secure, confused, "carrier-hs256", "token algorithm 'HS256' refused")


async def test_a_token_under_an_unknown_key_id_is_refused(secure: LocalCluster) -> None:
    unknown = token(OWNER, ["app"], key=OTHER_KEY, kid="k9")
    await assert_token_refused(secure, unknown, "carrier-kid", "token key id 'k9' is not in the key set")


async def test_a_token_with_a_bad_signature_is_refused(secure: LocalCluster) -> None:
    """Signed with another key under the known key id."""
    forged = token(OWNER, ["app"], key=OTHER_KEY)
    await assert_token_refused(secure, forged, "carrier-sig", "token signature does not verify")


async def test_a_malformed_token_is_refused(secure: LocalCluster) -> None:
    await assert_token_refused(secure, "not.a-jwt", "carrier-malformed", "malformed token")


async def test_a_token_with_an_unknown_role_is_refused(secure: LocalCluster) -> None:
    promoted = token(OWNER, ["app", "node"])
    await assert_token_refused(secure, promoted, "carrier-role", "unknown role 'node'")


async def test_an_authorization_that_is_not_bearer_is_refused(secure: LocalCluster) -> None:
    node = secure.nodes[REGION]
    before, seq = state(secure), await audit_mark(node)
    assert secure.pki is not None
    async with secure.pki.dialer("carrier-basic", ()).channel(node.address) as channel:
        request = spb.PutRequest(namespace=NS, key="token-basic", value=b"x")
        call = spb_grpc.StorageNodeServiceStub(channel).Put(
            request, metadata=(("authorization", "Basic Y3JtOnNlY3JldA=="),), timeout=5
        )
        await refused(
            call, grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        )
    assert state(secure) == before
    await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/carrier-basic")


async def test_an_expired_token_is_refused_by_the_coordinator_too(secure: LocalCluster) -> None:
    """The coordinator keeps no audit trail: the refusal is counted there."""
    counted = coordinator_refusals(secure, "coordinator.GetTopology", "unauthenticated")
    expired = token(OWNER, ["app"], exp=int(time.time()) - 3600)
    async with secure.coordinator_channel() as channel:
        call = cpb_grpc.CoordinatorServiceStub(channel).GetTopology(
            cpb.GetTopologyRequest(), metadata=bearer(expired), timeout=5
        )
        await refused(call, grpc.StatusCode.UNAUTHENTICATED, "token expired")
    assert coordinator_refusals(secure, "coordinator.GetTopology", "unauthenticated") == counted + 1


async def test_regression_a_refused_token_is_audited_under_the_certificate_that_carried_it(
    secure: LocalCluster,
) -> None:
    """A call refused for its token was audited under the peer address (ipv4:host:port), though
    the connection's certificate had been verified: the trail lost who sent the bad token. Now
    the certificate names the caller; the peer address is left for a certificate that names no
    one (SAN-less here), where nothing verified is known."""
    await assert_token_refused(secure, "not.a-jwt", "carrier-regression", "malformed token")
    assert secure.pki is not None
    node = secure.nodes[REGION]
    seq = await audit_mark(node)
    anonymous = odd_certificate(secure.pki.ca, uri=None, dns=())
    credentials = grpc.ssl_channel_credentials(
        (secure.pki.directory / "ca.crt").read_bytes(), anonymous.key_pem, anonymous.certificate_pem
    )
    async with grpc.aio.secure_channel(node.address, credentials) as channel:
        call = spb_grpc.StorageNodeServiceStub(channel).Put(
            spb.PutRequest(namespace=NS, key="token-anonymous", value=b"x"),
            metadata=bearer("not.a-jwt"),
            timeout=5,
        )
        # The carrier is checked before the token (a token is bound to the certificate under it).
        await refused(call, grpc.StatusCode.UNAUTHENTICATED, "has no subject alternative names")
    entry = await denial(node, seq, "storage.Put")
    assert entry.principal.startswith("ipv4:127.0.0.1:"), entry.principal
