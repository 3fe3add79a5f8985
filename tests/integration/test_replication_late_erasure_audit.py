"""A replicated record (streamed or repaired) refused at commit by the erasure recheck, and what
the audit trail says of it (node/replication/late_refusals.py).

The target admits a record (its replicate_receive allow entry is made), then seals, audits and
commits it; an erasure of the record's subject that runs in between is caught by the recheck on
the writer thread, and the record is not applied. The trail used to keep only the allow entry,
which says the record was applied. The interleaving is forced: the target's erasure runs when
the batch is handed to sealing, after the admission.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Dot, Mutation, Version, sha256
from domicile.cluster import ClusterSpec
from domicile.model import Classification
from domicile.subjects import ErasureOrder
from domicile.wire.records import mutation_to_pb
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually

SOURCE, TARGET = "eu-west-1", "eu-central-1"
SUBJECT = "subject-late-1"
REQUEST = "req-1a7e000001"
KEY = "c-late"


@pytest.fixture
async def eu(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [SOURCE, TARGET])
    # No anti-entropy round: it would offer the refused record again, to be refused at admission.
    cluster.node_overrides["antientropy_interval_s"] = 0
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def erase_once_admitted(node: Node, subject_id: str) -> asyncio.Event:
    """Runs the subject's erasure on `node` when a replicated batch holding a record of it has
    been admitted, before it is sealed; the event is set once it has run."""
    sealer = node.receiver.sealer
    seal = sealer.seal_mutations
    erased = asyncio.Event()

    async def erasing_first(cluster: ClusterSpec, mutations: Sequence[Mutation]) -> list[Mutation]:
        if not erased.is_set() and any(m.version.subject_id == subject_id for m in mutations):
            topology = node.view.topology
            order = ErasureOrder(REQUEST, subject_id, 0, (node.config.region,))
            await node.eraser.erase(order, topology.cluster, topology.holds)
            erased.set()
        return await seal(cluster, mutations)

    sealer.seal_mutations = erasing_first  # type: ignore[method-assign]
    return erased


def received_entries(node: Node, key: str) -> list[AuditEntry]:
    found = (AuditEntry.decode(e.body) for e in node.audit.iter_all())
    return [e for e in found if e.action == "replicate_receive" and e.key == key]


def refusals_counted(node: Node) -> float:
    value = node.metrics.registry.get_sample_value(
        "domicile_policy_decisions_total",
        {"action": "replicate", "result": "refuse", "rule": "subject-erased"},
    )
    return float(value or 0.0)


@pytest.mark.parametrize("carried", [True, False], ids=["commit-carries-entries", "entries-before-apply"])
async def test_regression_a_record_refused_at_commit_is_audited_as_refused(
    eu: LocalCluster, carried: bool
) -> None:
    target = eu.nodes[TARGET]
    if not carried:
        # As on an engine whose commits carry no audit entries (MongoDB): every entry is made
        # durable in the audit log before the apply.
        target.receiver.carry_audit = None
    assert target.engine.carries_audit
    erased = erase_once_admitted(target, SUBJECT)
    await eu.put(SOURCE, "customers_eu", KEY, b"personal", subject_id=SUBJECT, subject_jurisdiction="DE")
    await asyncio.wait_for(erased.wait(), 20)

    async def refused() -> bool:
        return any(e.decision == "refuse" for e in received_entries(target, KEY))

    await eventually(refused, 20.0, "the refusal entry of the record refused at commit")
    state = target.engine.get("customers_eu", KEY)
    assert state is None or not state.live(), "the erasure recheck let the record in"
    entries = received_entries(target, KEY)
    refusal = entries[-1]
    assert (refusal.decision, refusal.rule) == ("refuse", "subject-erased")
    assert f"request={REQUEST} refused at commit" in refusal.detail
    assert refusal.subject and refusal.subject == entries[0].subject
    if carried:
        # The allow entry was not yet written: the commit carried the refusal in its place.
        assert [e.decision for e in entries] == ["refuse"]
    else:
        # The allow entry was durable before the apply; the refusal follows and supersedes it.
        assert [e.decision for e in entries] == ["allow", "refuse"]
    assert refusals_counted(target) == 1.0


def ghost_repair(node: Node, key: str, subject_id: str) -> Mutation:
    """A version of another node's write, as a peer sends it in an anti-entropy or bootstrap
    repair (any node's writes)."""
    value = b"repaired personal"
    version = Version(
        dot=Dot("ghost", 1),
        value=value,
        hlc=node.clock.now(),
        subject_id=subject_id,
        subject_jurisdiction="DE",
        classification=Classification.PERSONAL,
        checksum=sha256(value),
        origin_region=SOURCE,
    )
    return Mutation("customers_eu", key, CausalContext.empty(), version, lsn=0, origin_node_id="ghost")


@pytest.mark.parametrize("via", ["antientropy", "bootstrap"])
async def test_regression_a_repair_overtaken_by_an_erasure_is_refused_at_commit_and_audited(
    eu: LocalCluster, via: str
) -> None:
    # A repair's records are admitted, sealed and audited before their commit, like a stream's;
    # the repair used to commit them without checking the erasure block again.
    target = eu.nodes[TARGET]
    erased = erase_once_admitted(target, SUBJECT)
    key = f"c-repair-{via}"
    result = await target.receiver.apply_repair(
        SOURCE, [mutation_to_pb(ghost_repair(target, key, SUBJECT))], via=via
    )
    assert erased.is_set()
    assert result.repaired == () and result.refused == 1
    state = target.engine.get("customers_eu", key)
    assert state is None or not state.live(), "the erasure recheck let the repaired record in"
    await target.audit.flush()
    entries = received_entries(target, key)
    # The allow entry was durable before the apply; the refusal follows and supersedes it.
    assert [(e.decision, e.rule) for e in entries][-1] == ("refuse", "subject-erased")
    assert [e.decision for e in entries] == ["allow", "refuse"]
    assert f"{via} dot=ghost:1 request={REQUEST} refused at commit" in entries[-1].detail
    assert entries[-1].subject and entries[-1].subject == entries[0].subject
    assert refusals_counted(target) == 1.0
    refused = target.metrics.registry.get_sample_value(
        "domicile_replication_refused_total", {"source": SOURCE, "target": TARGET}
    )
    assert refused == 1.0
