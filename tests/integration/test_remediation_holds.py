"""A remediation never removes a copy a legal hold covers, not even a last copy with
--remove-last-copies: the hold means the data must be preserved. The held copy stays, is
listed apart with its hold in the receipt and the audit trail, and the scanner keeps reporting
it as a violation, saying which hold keeps it. An unheld forbidden copy of the same run is
removed (the control).

A namespace scoped to us-east-1 only: once the US loses its DPF certification, no region may
hold a German customer's record of it, so every such copy is a last copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.audit import AuditEntry
from domicile.causality import Dot
from domicile.cli.main import main
from domicile.subjects import HoldScope
from node.daemon import Node
from tests.integration.test_antientropy import ghost_write, plant
from tests.integration.test_compliance import metric
from tests.integration.test_policy_reconciliation import loose, tight
from tests.support.cluster import NAMESPACES, LocalCluster, eventually

REGION = "us-east-1"
NS = "customers_us"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    us_only = {"name": NS, "regions": [REGION], "classification": "personal"}
    cluster = LocalCluster(tmp_path, [REGION], pack=loose(), namespaces=[*NAMESPACES, us_only])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def cli(cluster: LocalCluster, *argv: str) -> tuple[int, str]:
    """Runs the `domicile` command in a thread (it runs an event loop of its own)."""
    out = io.StringIO()
    args = [
        *argv,
        "--region",
        REGION,
        "--coordinator",
        cluster.coordinator_address,
        "--deadline",
        "30",
        *cluster.cli_args(),
    ]

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(args)

    code = await asyncio.to_thread(run)
    return code, out.getvalue()


async def withdrawals(node: Node) -> list[AuditEntry]:
    await node.audit.flush()
    found = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in found if e.action == "compliance_withdraw"]


async def test_regression_remove_last_copies_keeps_a_copy_under_legal_hold(cluster: LocalCluster) -> None:
    us = cluster.nodes[REGION]
    de = {"subject_jurisdiction": "DE"}
    await cluster.put(REGION, NS, "held-1", b"evidence", subject_id="s-held", **de)
    await cluster.put(REGION, NS, "free-1", b"profile", subject_id="s-free", **de)
    await cluster.change_policy(tight())
    async with cluster.async_client(deadline_s=5.0) as client:
        hold = await client.place_hold(HoldScope.SUBJECT, subject_id="s-held", reason="litigation 7")

    async def adopted() -> bool:
        return any(h.hold_id == hold.hold_id for h in us.view.topology.holds)

    await eventually(adopted, 10.0, "the hold adopted by the node")

    code, out = await cli(cluster, "compliance", "remediate", "--apply", "--remove-last-copies", "--json")

    # The held last copy stays; the unheld one of the same run is removed.
    held_state, free_state = us.engine.get(NS, "held-1"), us.engine.get(NS, "free-1")
    assert held_state is not None and [v.subject_id for v in held_state.live()] == ["s-held"]
    assert free_state is None or not free_state.live()
    # The receipt lists the held copy apart, naming its hold, and it is still a violation.
    assert code == 1, out
    (receipt,) = json.loads(out)["regions"]
    assert (receipt["copies_removed"], receipt["kept_held"], receipt["violations_after"]) == (1, 1, 1)
    (removed,) = receipt["removed"]
    (kept,) = receipt["held"]
    assert removed["key"] == "free-1" and removed["allowed_regions"] == []
    assert kept["key"] == "held-1" and kept["allowed_regions"] == []
    assert f"legal hold {hold.hold_id}" in kept["hold_reason"]
    assert "litigation 7" in kept["hold_reason"]
    # The audit trail records both decisions.
    decisions = {(e.key, e.decision): e for e in await withdrawals(us)}
    assert set(decisions) == {("held-1", "keep"), ("free-1", "remove")}
    assert f"legal hold {hold.hold_id}" in decisions[("held-1", "keep")].detail
    receipt_entries = [
        AuditEntry.decode(e.body).detail
        for e in us.audit.iter_all()
        if AuditEntry.decode(e.body).action == "compliance_remediation_receipt"
    ]
    assert '"kept_held":1' in receipt_entries[-1]

    # The scanner still reports the held copy, and says which hold keeps it.
    code, out = await cli(cluster, "compliance", "scan", "--json")
    assert code == 1, out
    (region,) = json.loads(out)["regions"]
    assert (region["violations_total"], region["violations_held"]) == (1, 1)
    (violation,) = region["violations"]
    assert violation["key"] == "held-1" and f"legal hold {hold.hold_id}" in violation["hold_reason"]
    code, out = await cli(cluster, "compliance", "scan")
    assert f"held: legal hold {hold.hold_id}" in out and "(1 under a legal hold)" in out
    assert metric(us, "domicile_compliance_violations_held") == 1


async def test_a_released_hold_lets_the_next_remediation_remove_the_copy(cluster: LocalCluster) -> None:
    us = cluster.nodes[REGION]
    await cluster.put(REGION, NS, "c-1", b"p", subject_id="s-1", subject_jurisdiction="DE")
    await cluster.change_policy(tight())
    async with cluster.async_client(deadline_s=5.0) as client:
        hold = await client.place_hold(HoldScope.KEY, namespace=NS, key="c-1", reason="case 9")

        async def holds(n: int) -> bool:
            return len(us.view.topology.holds) == n

        await eventually(lambda: holds(1), 10.0, "the hold adopted by the node")
        receipt = await us.compliance_remediate("r-1", "test", remove_last_copies=True)
        assert (len(receipt.removed), receipt.kept_held) == (0, 1)
        await client.release_hold(hold.hold_id, "case closed")
        await eventually(lambda: holds(0), 10.0, "the release adopted by the node")
    receipt = await us.compliance_remediate("r-2", "test", remove_last_copies=True)
    assert (len(receipt.removed), receipt.kept_held, receipt.violations_after) == (1, 0, 0)
    state = us.engine.get(NS, "c-1")
    assert state is None or not state.live()


async def test_holds_are_matched_per_version_so_an_unheld_sibling_still_goes(cluster: LocalCluster) -> None:
    """Two concurrent versions of one key about two people: a hold on one subject keeps that
    version only (as an erasure matches a hold by the version's subject)."""
    us = cluster.nodes[REGION]
    await cluster.change_policy(tight())
    de = {"subject_jurisdiction": "DE"}
    await plant(us, [ghost_write(us, NS, "k-1", b"a", origin="ghost-a", subject_id="s-held", **de)])
    await plant(us, [ghost_write(us, NS, "k-1", b"b", origin="ghost-b", subject_id="s-free", **de)])
    state = us.engine.get(NS, "k-1")
    assert state is not None and len(state.live()) == 2
    async with cluster.async_client(deadline_s=5.0) as client:
        hold = await client.place_hold(HoldScope.SUBJECT, subject_id="s-held", reason="litigation 8")

    async def adopted() -> bool:
        return any(h.hold_id == hold.hold_id for h in us.view.topology.holds)

    await eventually(adopted, 10.0, "the hold adopted by the node")
    receipt = await us.compliance_remediate("r-1", "test", remove_last_copies=True)
    assert (receipt.versions_removed, receipt.kept_held, receipt.violations_after) == (1, 1, 1)
    state = us.engine.get(NS, "k-1")
    assert state is not None and [v.subject_id for v in state.live()] == ["s-held"]
    (kept,) = receipt.held
    assert kept.subject_id == "s-held" and kept.dots == (Dot("ghost-a", 1),)
