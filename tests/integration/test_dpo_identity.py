"""Erasures and legal holds are audited in every region as the DPO who asked for them (the
identity the coordinator verified), not as the coordinator that relayed them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.audit import AuditEntry
from domicile.client import AsyncClient
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.subjects import RequestStatus
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually

REGION = "eu-west-1"
DPO = "spiffe://domicile/client/dpo-anna"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def dpo(cluster: LocalCluster) -> AsyncClient:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client("dpo-anna", (Role.DPO,)))
    return AsyncClient(cluster.coordinator_address, dialer=dialer, deadline_s=5)


async def entries(node: Node, action: str) -> list[AuditEntry]:
    await node.audit.flush()
    found = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in found if e.action == action]


async def test_regression_erasure_and_hold_are_audited_as_the_dpo(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    await cluster.put(REGION, "customers_eu", "c-1", b"Anna", subject_id="s-anna", subject_jurisdiction="DE")
    async with dpo(cluster) as client:
        await client.place_hold("subject", subject_id="s-erik", reason="litigation 7")
        opened = await client.erase_subject("s-anna", "Art. 17 request", "DE")

        async def done() -> bool:
            return (await client.subject_request(opened.request_id)).status is RequestStatus.COMPLETED

        await eventually(done, 20.0, "the erasure completed")

    async def placed() -> bool:
        return bool(await entries(node, "hold_placed"))

    await eventually(placed, 10.0, "the hold audited at the node")
    assert [e.principal for e in await entries(node, "hold_placed")] == [DPO]
    erased = [e for e in await entries(node, "erase") if e.key == "c-1"]
    assert erased and {e.principal for e in erased} == {DPO}


async def test_regression_a_hold_release_is_audited_as_the_dpo_who_released_it(cluster: LocalCluster) -> None:
    """The release used to be recorded as the coordinator's: the set of holds in force says that a
    hold is gone, not who released it. The orders now carry the latest releases."""
    node = cluster.nodes[REGION]
    async with dpo(cluster) as client:
        hold = await client.place_hold("subject", subject_id="s-erik", reason="litigation 7")

        async def placed() -> bool:
            return bool(await entries(node, "hold_placed"))

        await eventually(placed, 10.0, "the hold audited at the node")
        await client.release_hold(hold.hold_id, "case settled")

    async def released() -> bool:
        return bool(await entries(node, "hold_released"))

    await eventually(released, 10.0, "the release audited at the node")
    [entry] = await entries(node, "hold_released")
    assert entry.principal == DPO
    assert entry.detail == f"legal hold {hold.hold_id} on the subject: litigation 7; released: case settled"
