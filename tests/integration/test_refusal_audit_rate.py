"""A flood of refused calls is audited at a bounded rate per principal: the first refusals one
by one, the rest counted and summarised in one later entry, so the audit queue stays free."""

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
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
FLOOD = 25
AUDITED = 4


async def denied(node: Node) -> list[AuditEntry]:
    await node.audit.flush()
    found = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in found if e.action == "access_denied"]


async def test_regression_a_flood_of_refusals_is_audited_at_a_bounded_rate(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        node = cluster.nodes[REGION]
        node.refusal_audit.per_window = AUDITED
        assert cluster.pki is not None
        dialer = Dialer.mutual_tls(cluster.pki.client("flooder", (Role.APP,)))
        async with dialer.channel(node.address, ExpectedPeer.node(REGION, REGION)) as channel:
            stub = spb_grpc.StorageNodeServiceStub(channel)
            for _ in range(FLOOD):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ScanCompliance(spb.ScanComplianceRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = [e for e in await denied(node) if e.principal == "spiffe://domicile/client/flooder"]
        assert len(mine) == AUDITED
        assert node.metrics.authz_refusals_unaudited._value.get() == FLOOD - AUDITED
        # Every refusal is still counted.
        counted = node.metrics.registry.get_sample_value(
            "domicile_authz_refusals_total", {"action": "storage.ScanCompliance", "reason": "policy"}
        )
        assert counted == FLOOD
        # Once the window is over, one entry summarises the rest.
        later = time.monotonic() + node.refusal_audit.window_s
        node.refusal_audit.clock = lambda: later
        node.refusal_audit.flush()
        mine = [e for e in await denied(node) if e.principal == "spiffe://domicile/client/flooder"]
        assert len(mine) == AUDITED + 1
        summary = mine[-1]
        assert summary.rule == "rate_limited"
        assert f"{FLOOD - AUDITED} more refusals" in summary.detail
        assert f"storage.ScanCompliance={FLOOD - AUDITED}" in summary.detail
    finally:
        await cluster.stop()
