"""When the policy loosens, the records a region was refused before are pulled there by the
backfill job (node/replication/backfill.py), each transfer decided and audited at both ends."""

from __future__ import annotations

from pathlib import Path

from domicile.audit import AuditEntry
from node.daemon import Node
from tests.integration.test_compliance import DPF, NAMESPACES_WITH_CUSTOMERS
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack, with_fact

RECORDS = 12


def entries(node: Node, **match: str) -> list[AuditEntry]:
    out = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in out if all(getattr(e, k) == v for k, v in match.items())]


def metric(node: Node, name: str, labels: dict[str, str] | None = None) -> float:
    value = node.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def held(node: Node, keys: list[str]) -> list[str]:
    return [k for k in keys if node.engine.get("customers", k) is not None]


async def test_a_loosening_pulls_the_held_back_records_audited_at_both_ends(tmp_path: Path) -> None:
    # The US region starts without DPF certification: EU customers may not be copied there.
    tight = with_fact(sample_pack(), "2026-12-01.no-dpf", DPF, False)
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=tight, namespaces=NAMESPACES_WITH_CUSTOMERS
    )
    # No anti-entropy rounds: whatever reaches the US after the loosening is the backfill's.
    cluster.node_overrides = {"antientropy_interval_s": 0, "backfill_rate_keys_s": 50}
    await cluster.start_linked()
    try:
        eu, us = cluster.nodes["eu-west-1"], cluster.nodes["us-east-1"]
        keys = [f"de-{i}" for i in range(RECORDS)]
        for key in keys:
            await cluster.put(
                "eu-west-1", "customers", key, b"profile", subject_id=f"s-{key}", subject_jurisdiction="DE"
            )
        # A public record goes everywhere: once it is at the US node, so would the customers be.
        await cluster.put("eu-west-1", "instruments", "marker", b"m")
        await eventually(lambda: _has(us, "instruments", "marker"), what="the marker at us-east-1")
        assert held(us, keys) == []
        assert len(entries(eu, action="replicate_send", decision="refuse")) >= RECORDS

        await cluster.change_policy(sample_pack())

        async def backfilled() -> bool:
            return held(us, keys) == keys and us.backfill.progress.state == "done"

        await eventually(backfilled, 20.0, "every held-back record backfilled to us-east-1")
        progress = us.backfill.progress
        assert progress.keys_pulled == RECORDS and progress.pairs_done == progress.pairs_total >= 1
        assert progress.policy_version == sample_pack()["version"]
        assert (
            metric(us, "domicile_backfill_keys_pulled_total", {"peer": "eu-west-1", "namespace": "customers"})
            == RECORDS
        )
        assert metric(us, "domicile_backfill_running") == 0
        assert metric(us, "domicile_backfill_rate_keys_per_second") == 50
        # Every transfer: decided and audited as a send at the source, as a receive here.
        await eu.audit.flush()
        await us.audit.flush()
        for key in keys:
            (sent,) = [e for e in entries(eu, action="replicate_send", key=key, decision="allow")]
            assert "antientropy" in sent.detail and sent.policy_version == sample_pack()["version"]
            (received,) = entries(us, action="replicate_receive", key=key, decision="allow")
            assert received.principal == "node:eu-west-1"
        status = await us.status()
        assert status.backfill.state == "done" and status.backfill.keys_pulled == RECORDS
        assert (await us.compliance_scan(0, "test")).violations_total == 0
    finally:
        await cluster.stop()


async def test_a_change_that_loosens_nothing_pulls_nothing(tmp_path: Path) -> None:
    """The negative side: a new pack version with the same facts starts a backfill that finds
    nothing to pull, and the held-back records stay where they were."""
    tight = with_fact(sample_pack(), "2026-12-01.no-dpf", DPF, False)
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=tight, namespaces=NAMESPACES_WITH_CUSTOMERS
    )
    cluster.node_overrides = {"antientropy_interval_s": 0}
    await cluster.start_linked()
    try:
        us = cluster.nodes["us-east-1"]
        await cluster.put("eu-west-1", "customers", "de-x", b"p", subject_id="s", subject_jurisdiction="DE")
        await cluster.change_policy(with_fact(sample_pack(), "2026-12-01.no-dpf-again", DPF, False))

        async def done() -> bool:
            return us.backfill.progress.state == "done"

        await eventually(done, 20.0, "the backfill after the second pack")
        assert us.backfill.progress.keys_pulled == 0
        assert held(us, ["de-x"]) == []
    finally:
        await cluster.stop()


async def _has(node: Node, namespace: str, key: str) -> bool:
    return node.engine.get(namespace, key) is not None
