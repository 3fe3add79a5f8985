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
from domicile.subjects import RequestStatus, SubjectOrders
from node import daemon as node_daemon
from node.daemon import Node
from node.lifecycle.orders_store import save_orders
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


async def test_regression_a_failure_between_auditing_and_storing_orders_loses_no_entry(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node stored a new set of orders, then audited the holds placed and released: a crash
    between the two lost those entries for good, since the restarted node compares against the
    set it stored. They are audited first now (and again if the set comes again unstored)."""
    node = cluster.nodes[REGION]
    failures: list[str] = []

    def crash_once(engine: object, orders: SubjectOrders) -> None:
        save_orders(engine, orders)  # type: ignore[arg-type]
        if not failures:
            # The node dies right after storing the set, and a restart reads it back: what it
            # acts on is the stored set, with nothing left to tell it what changed.
            failures.append("crash")
            node.view.adopt_orders(orders)
            raise RuntimeError("the node died after storing the orders")

    monkeypatch.setattr(node_daemon, "save_orders", crash_once)
    async with dpo(cluster) as client:
        await client.place_hold("subject", subject_id="s-erik", reason="litigation 7")

        async def crashed() -> bool:
            return failures == ["crash"]

        await eventually(crashed, 10.0, "the node storing the set, then dying")
    # Stored and "restarted" on the new set, the node has nothing left to compare: the entry
    # must have been written before.
    assert {e.principal for e in await entries(node, "hold_placed")} == {DPO}
