"""Reconciliation when the policy changes, under load: a loosening is backfilled, a tightening
is remediated (`RemediateCompliance`, the copies removed in the forbidden region only), the
scanner reports 0 after each, and no copy the policy allows is lost.

The "no allowed copy lost" check compares every live version each region held before a
remediation with what it holds after; its negative control is a plain Delete in the forbidden
region, whose tombstone replicates and takes the allowed copies with it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.causality import Dot
from domicile.policy import Action, RecordFacts
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from node.engine.base import LocalWrite
from tests.integration.test_compliance import DPF, NAMESPACES_WITH_CUSTOMERS
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack, with_fact

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1"]
# Who writes where: EU customers in the EU (the US copy depends on DPF), Californians in the US
# (no localization: everywhere).
WRITERS = [("eu-west-1", "DE"), ("eu-central-1", "FR"), ("us-east-1", "US-CA")]
Copy = tuple[str, str, str, Dot]  # region, namespace, key, dot


def tight() -> dict[str, object]:
    return with_fact(sample_pack(), "2026-12-01.no-dpf", DPF, False)


def loose() -> dict[str, object]:
    return with_fact(sample_pack(), "2026-12-01.dpf", DPF, True)


def live_copies(cluster: LocalCluster) -> set[Copy]:
    out: set[Copy] = set()
    for region, node in cluster.nodes.items():
        after = ""
        while rows := node.engine.scan("customers", "", after, 1000):
            for key, state in rows:
                out.update((region, "customers", key, v.dot) for v in state.live())
            after = rows[-1][0]
    return out


def allowed_copies(cluster: LocalCluster, copies: set[Copy]) -> set[Copy]:
    """Those of `copies` the policy in force lets their region hold."""
    out = set()
    for region, namespace, key, dot in copies:
        node = cluster.nodes[region]
        state = node.engine.get(namespace, key)
        version = next((v for v in state.versions if v.dot == dot), None) if state else None
        if version is None:
            out.add((region, namespace, key, dot))  # gone: judged by the others' copy below
            continue
        facts = RecordFacts(
            namespace, version.classification, version.subject_id, version.subject_jurisdiction
        )
        action = Action.STORE if version.origin_region == region else Action.REPLICATE
        if node.view.policy.decide(facts, region, action).allowed:
            out.add((region, namespace, key, dot))
    return out


def lost(before_allowed: set[Copy], after: set[Copy]) -> set[Copy]:
    """Allowed copies held before that are not held any more (a superseding client write would
    also remove one; the load writes new keys only, so none is superseded)."""
    return before_allowed - after


async def settled(cluster: LocalCluster) -> None:
    """Every stream has delivered what was committed before: a marker written at each region
    has reached every other."""
    marks = []
    for region in cluster.nodes:
        key = f"mark-{region}-{random.random()}"
        await cluster.put(region, "instruments", key, b"m")
        marks.append(key)

    async def arrived() -> bool:
        return all(n.engine.get("instruments", k) is not None for n in cluster.nodes.values() for k in marks)

    await eventually(arrived, 15.0, "the markers everywhere")


async def anti_entropy_everywhere(cluster: LocalCluster) -> None:
    """One round of every node with every peer: what a removal could leak through it, it has."""
    for node in cluster.nodes.values():
        for peer in sorted(node.entropy.peers(node.view.topology)):
            await node.entropy.round_with(peer)


async def violations(cluster: LocalCluster) -> int:
    return sum([(await n.compliance_scan(0, "test")).violations_total for n in cluster.nodes.values()])


async def remediate_everywhere(
    cluster: LocalCluster, request_id: str
) -> list[spb.RemediateComplianceResponse]:
    return [
        await cluster.stub(region).RemediateCompliance(
            spb.RemediateComplianceRequest(request_id=request_id), timeout=30
        )
        for region in cluster.nodes
    ]


async def load(cluster: LocalCluster, stop: asyncio.Event, rng: random.Random) -> int:
    written = 0
    counter = itertools.count()
    while not stop.is_set():
        region, jurisdiction = rng.choice(WRITERS)
        n = next(counter)
        try:
            await cluster.put(
                region,
                "customers",
                f"load-{n}",
                b"profile",
                subject_id=f"s-{n}",
                subject_jurisdiction=jurisdiction,
            )
            written += 1
        except grpc.aio.AioRpcError as exc:
            # The coordinator restarts for each policy change; the nodes serve on.
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        await asyncio.sleep(0.005)
    return written


def entries(node: Node, **match: str) -> list[AuditEntry]:
    out = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    return [e for e in out if all(getattr(e, k) == v for k, v in match.items())]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, REGIONS, pack=tight(), namespaces=NAMESPACES_WITH_CUSTOMERS)
    # Rounds only when the test asks: a removal must hold against them, not be hidden by timing.
    cluster.node_overrides = {"antientropy_interval_s": 0, "backfill_rate_keys_s": 2000}
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_loosen_then_tighten_under_load_leaves_no_violation_and_loses_no_allowed_copy(
    cluster: LocalCluster,
) -> None:
    seed = int(os.environ.get("DOMICILE_SEED", random.randrange(1 << 30)))
    print(f"DOMICILE_SEED={seed}")
    stop = asyncio.Event()
    writer = asyncio.create_task(load(cluster, stop, random.Random(seed)))
    us = cluster.nodes["us-east-1"]
    try:
        await asyncio.sleep(0.5)
        # Loosen: the US may hold EU customers again; what was held back is backfilled.
        await cluster.change_policy(loose())

        async def backfilled() -> bool:
            return us.backfill.progress.state == "done"

        await eventually(backfilled, 30.0, "the backfill at us-east-1")
        await asyncio.sleep(0.5)
        stop.set()
        written = await writer
        await settled(cluster)
        eu_keys = {k for r, _, k, _ in live_copies(cluster) if r == "eu-west-1"}
        us_keys = {k for r, _, k, _ in live_copies(cluster) if r == "us-east-1"}
        assert eu_keys and eu_keys <= us_keys, "every EU customer is in the US after the loosening"
        assert us.backfill.progress.keys_pulled > 0
        await remediate_everywhere(cluster, "after-loosening")
        assert await violations(cluster) == 0

        # Tighten under load: the US copies of EU customers must go, and only those.
        stop = asyncio.Event()
        writer = asyncio.create_task(load(cluster, stop, random.Random(seed + 1)))
        await cluster.change_policy(tight())
        await asyncio.sleep(0.3)
        stop.set()
        written += await writer
        await settled(cluster)
        before = live_copies(cluster)
        before_allowed = allowed_copies(cluster, before)
        forbidden = before - before_allowed
        assert forbidden and {r for r, *_ in forbidden} == {"us-east-1"}
        assert await violations(cluster) == len(forbidden)

        receipts = await remediate_everywhere(cluster, "after-tightening")
        by_region = {r.region: r for r in receipts}
        assert by_region["us-east-1"].versions_removed == len(forbidden)
        assert by_region["eu-west-1"].copies_removed == by_region["eu-central-1"].copies_removed == 0
        assert all(r.violations_after == 0 for r in receipts)
        # Nothing the removal did may reach the allowed copies: not the streams, not a round.
        await settled(cluster)
        await anti_entropy_everywhere(cluster)
        await settled(cluster)
        after = live_copies(cluster)
        assert not lost(before_allowed, after), "an allowed copy was lost"
        assert not (forbidden & after)
        assert await violations(cluster) == 0
        # Audited before it happened, one entry per key, and the receipt.
        await us.audit.flush()
        withdrawn = entries(us, action="compliance_withdraw", decision="remove")
        assert {e.key for e in withdrawn} == {k for _, _, k, _ in forbidden}
        (receipt,) = [
            e for e in entries(us, action="compliance_remediation_receipt") if "after-tightening" in e.detail
        ]
        assert f'"versions_removed":{len(forbidden)}' in receipt.detail
        assert written > 0
    finally:
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)


async def test_a_removed_copy_comes_back_when_the_policy_loosens_again(cluster: LocalCluster) -> None:
    """Including one written in the region itself: its dot is not reused, and not claimed as seen."""
    await cluster.change_policy(loose())
    await cluster.put("eu-west-1", "customers", "de-1", b"p", subject_id="s1", subject_jurisdiction="DE")
    await cluster.put("us-east-1", "customers", "de-2", b"q", subject_id="s2", subject_jurisdiction="DE")
    await settled(cluster)
    await cluster.change_policy(tight())
    (receipt,) = [r for r in await remediate_everywhere(cluster, "r1") if r.region == "us-east-1"]
    assert receipt.copies_removed == 2
    us = cluster.nodes["us-east-1"]
    assert [k for k in ("de-1", "de-2") if us.engine.get("customers", k).live()] == []
    # A new write of the key here gets a new dot, not the removed one's.
    await cluster.put("us-east-1", "customers", "de-2", b"r", subject_id="s3", subject_jurisdiction="US-CA")
    dots = {v.dot for v in us.engine.get("customers", "de-2").versions}
    assert Dot("us-east-1", 1) not in dots
    await cluster.change_policy(loose())

    async def back() -> bool:
        return all(us.engine.get("customers", k).live() for k in ("de-1", "de-2")) and (
            len(us.engine.get("customers", "de-2").live()) == 2
        )

    await eventually(back, 20.0, "the removed copies backfilled")
    assert await violations(cluster) == 0


async def test_the_lost_copy_check_catches_a_tombstone_that_replicates(cluster: LocalCluster) -> None:
    """Negative control: removing the forbidden US copy with an ordinary tombstone (what a
    remediation that "deletes" would write) replicates it and deletes the allowed EU copies;
    the check must say so."""
    await cluster.change_policy(loose())
    await cluster.put("eu-west-1", "customers", "de-1", b"p", subject_id="s1", subject_jurisdiction="DE")
    await settled(cluster)
    await cluster.change_policy(tight())
    before = live_copies(cluster)
    before_allowed = allowed_copies(cluster, before)
    us = cluster.nodes["us-east-1"]
    (newest,) = us.engine.get("customers", "de-1").live()
    await us.committer.submit(LocalWrite.deleting("customers", "de-1", newest, None))
    await settled(cluster)
    assert lost(before_allowed, live_copies(cluster)), (
        "the check missed allowed copies deleted by a tombstone"
    )


@pytest.fixture
async def partitionable(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path, REGIONS, proxies=True, pack=loose(), namespaces=NAMESPACES_WITH_CUSTOMERS
    )
    cluster.node_overrides = {"antientropy_interval_s": 0, "backfill_rate_keys_s": 2000}
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_regression_a_removed_retried_write_is_not_lost_elsewhere_and_comes_back(
    partitionable: LocalCluster,
) -> None:
    """A Put retried under its request id in another region while the regions were cut off
    makes two versions; every region keeps eu-west-1's (the smaller dot) and knows the US one
    as its twin. The US removes its copy when the policy tightens. Its own twin stayed in the
    key's context: a US write of the key then superseded the removed version in the EU too, an
    acknowledged write lost everywhere; and when the policy loosened, the US dropped the copy
    the backfill brought as a duplicate of the request, so it never got it back."""
    cluster = partitionable
    for proxy in cluster.proxies.values():
        proxy.partition()
    fields = {"subject_id": "s1", "subject_jurisdiction": "DE", "request_id": "req-twin"}
    await cluster.put("eu-west-1", "customers", "de-1", b"p", **fields)
    await cluster.put("us-east-1", "customers", "de-1", b"p", **fields)
    for proxy in cluster.proxies.values():
        proxy.heal()
    kept = Dot("eu-west-1", 1)

    async def one_version() -> bool:
        states = [n.engine.get("customers", "de-1") for n in cluster.nodes.values()]
        return all(s is not None and [v.dot for v in s.versions] == [kept] for s in states)

    await eventually(one_version, 20.0, "eu-west-1's attempt kept in every region")
    await cluster.change_policy(tight())
    us = cluster.nodes["us-east-1"]
    (receipt,) = [r for r in await remediate_everywhere(cluster, "twin") if r.region == "us-east-1"]
    assert receipt.copies_removed == 1
    # A US client reads the key and writes it, having never seen the removed version.
    read = await cluster.get("us-east-1", "customers", "de-1")
    assert not read.versions
    await cluster.put(
        "us-east-1",
        "customers",
        "de-1",
        b"r",
        subject_id="s3",
        subject_jurisdiction="US-CA",
        context_token=read.context_token,
    )
    await settled(cluster)
    await anti_entropy_everywhere(cluster)
    await settled(cluster)
    for region in ("eu-west-1", "eu-central-1"):
        live = {v.dot for v in cluster.nodes[region].engine.get("customers", "de-1").live()}  # type: ignore[union-attr]
        assert kept in live, f"{region} lost the acknowledged write"
    await cluster.change_policy(loose())

    async def back() -> bool:
        return kept in {v.dot for v in us.engine.get("customers", "de-1").live()}  # type: ignore[union-attr]

    await eventually(back, 20.0, "the removed copy backfilled to us-east-1")
    assert await violations(cluster) == 0
