"""The backfill's token bucket (the average rate holds, whatever the page sizes) and what
starts a backfill."""

from __future__ import annotations

from typing import cast

import pytest

from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.topology import Link, NodeInfo, Topology
from node.metrics import NodeMetrics
from node.replication.backfill import Backfill, BackfillProgress, TokenBucket, inbound_pairs, rescoped
from node.replication.entropy import AntiEntropy
from node.topology_view import TopologyView


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_seconds_worth_passes_and_more_waits_in_proportion() -> None:
    clock = Clock()
    bucket = TokenBucket(50.0, clock)
    assert bucket.debt_after(50) == 0.0
    assert bucket.debt_after(25) == 0.5
    # Taken units are paid for: after the wait the balance is back to zero.
    clock.now += 0.5
    assert bucket.debt_after(0) == 0.0


def test_a_page_larger_than_the_bucket_waits_for_its_share() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, clock)
    assert bucket.debt_after(10) == 0.0
    assert bucket.debt_after(500) == 50.0


def test_the_average_over_many_pages_is_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(20.0, clock)
    taken = 0
    for _ in range(100):
        clock.now += bucket.debt_after(7)
        taken += 7
    elapsed = clock.now - 100.0
    # The first second's burst is free; past it, exactly the rate.
    assert (taken - 20) / elapsed == pytest.approx(20.0)


# -- what starts a backfill -----------------------------------------------------------------


def topology(revision: int, scope: tuple[str, ...], *links: Link) -> Topology:
    cluster = ClusterSpec(
        namespaces=(NamespaceSpec("reports", regions=scope), NamespaceSpec("refs", is_global=True))
    )
    return Topology(revision, cluster, links=links)


def test_a_new_link_of_a_registering_node_is_no_scope_change_but_a_wider_scope_is() -> None:
    before = topology(3, ("eu-west-1",), Link("a", "me", ("refs",)))
    registered = topology(4, ("eu-west-1",), Link("a", "me", ("refs",)), Link("b", "me", ("refs",)))
    assert rescoped(before, registered) == set()
    widened = topology(5, ("eu-west-1", "us-east-1"), Link("a", "me", ("reports", "refs")))
    assert rescoped(before, widened) == {"reports"}
    assert inbound_pairs(widened, "me") == {("a", "reports"), ("a", "refs")}
    assert inbound_pairs(widened, "a") == set()


# -- a pair that fails -----------------------------------------------------------------------


class _FailingEntropy:
    """The one call of anti-entropy a backfill pair makes, failing with what no handler names
    (the logic above anti-entropy is under test; anti-entropy itself has its own)."""

    def __init__(self, peer: NodeInfo) -> None:
        self.peer = peer
        self.calls = 0

    def peers(self, _topology: Topology) -> dict[str, tuple[NodeInfo, tuple[str, ...]]]:
        return {self.peer.node_id: (self.peer, ("refs",))}

    async def compare(self, *_args: object, **_kwargs: object) -> None:
        self.calls += 1
        raise RuntimeError("a transport error the comparison did not name")


async def test_regression_a_pair_failing_with_an_unnamed_error_is_tried_again_not_the_end_of_the_job() -> (
    None
):
    peer = NodeInfo("eu-central-1", "eu-central-1", "127.0.0.1:1")
    entropy = _FailingEntropy(peer)
    view = TopologyView(topology(1, ("eu-west-1",)))
    backfill = Backfill(
        node_id="eu-west-1",
        entropy=cast(AntiEntropy, entropy),
        view=view,
        metrics=NodeMetrics("eu-west-1", "eu-west-1"),
        rate_keys_s=1000.0,
    )
    progress = BackfillProgress(state="running", pairs_total=1)
    # It raised out of the job's task, which ended with the state left "running".
    assert await backfill._pair(("eu-central-1", "refs"), progress) is False
    assert entropy.calls == 1 and progress.pairs_done == 0
