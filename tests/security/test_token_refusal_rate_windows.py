"""Regression: Refusals are audited one by one up to a bound per principal and window (node/api/access.py,
RefusalAudit). An UNAUTHENTICATED refusal is keyed by "the peer address without the port"
(`identity.rpartition(":")[0]`), but a refused bearer token over a valid client certificate is
recorded with the certificate's SPIFFE ID (Gate.identity_of), which that cuts down to "spiffe".
Every client's bad-token refusals therefore share one window: one client that sends a burst of
bad tokens silences the audit of every other client's token refusals, and the summary names
"spiffe" instead of anyone."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.daemon import Node
from tests.support.bearer import token, token_settings, write_jwks
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"


async def denied(node: Node) -> list[AuditEntry]:
    await node.audit.flush()
    found = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in found if e.action == "access_denied"]


async def bad_token_call(dialer: Dialer, node: Node, times: int) -> None:
    expired = token("someone", ["app"], exp=int(time.time()) - 3600)
    metadata = (("authorization", f"Bearer {expired}"),)
    async with dialer.channel(node.address, ExpectedPeer.node(REGION, REGION)) as channel:
        stub = spb_grpc.StorageNodeServiceStub(channel)
        for _ in range(times):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Get(spb.GetRequest(namespace="instruments", key="k"), metadata=metadata, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_one_clients_bad_tokens_do_not_silence_the_audit_of_anothers(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    cluster.node_overrides = token_settings(write_jwks(tmp_path / "jwks.json"))
    await cluster.start()
    try:
        node = cluster.nodes[REGION]
        assert cluster.pki is not None
        flooder = Dialer.mutual_tls(cluster.pki.client("gateway-a", (Role.APP,)))
        victim = Dialer.mutual_tls(cluster.pki.client("gateway-b", (Role.APP,)))
        # gateway-a uses up a window's worth of audited refusals ...
        await bad_token_call(flooder, node, node.refusal_audit.per_window)
        # ... then gateway-b, another principal, is refused once.
        await bad_token_call(victim, node, 1)
        entries = await denied(node)
        a = [e for e in entries if e.principal == "spiffe://domicile/client/gateway-a"]
        b = [e for e in entries if e.principal == "spiffe://domicile/client/gateway-b"]
        assert len(a) == node.refusal_audit.per_window
        windows = sorted(node.refusal_audit._windows)
        assert len(b) == 1, f"gateway-b's refused token was not audited; refusal windows in use: {windows}"
    finally:
        await cluster.stop()
