"""The backfill's token bucket (the average rate holds, whatever the page sizes) and what
starts a backfill."""

from __future__ import annotations

import pytest

from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.topology import Link, Topology
from node.replication.backfill import TokenBucket, inbound_pairs, rescoped


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
