"""The erasure orders, the holds in force and the latest releases cut into pages and gathered back
(WatchSubjectOrders)."""

from __future__ import annotations

import os
import random

import pytest

from domicile.errors import InvalidArgument
from domicile.subjects import RELEASES_CARRIED, ErasureOrder, HoldRelease, HoldScope, LegalHold, SubjectOrders
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.subject_orders import OrdersGatherer, orders_to_pages


def random_orders(rng: random.Random) -> SubjectOrders:
    erasures = tuple(
        ErasureOrder(
            f"req-{n:010x}",
            "s" * rng.randint(1, 256),
            rng.randint(0, 2**41),
            ("eu-west-1",) * rng.randint(0, 3),
        )
        for n in range(rng.randint(0, 400))
    )
    holds = tuple(
        LegalHold(
            f"hold-{n:010x}",
            HoldScope.KEY,
            "",
            "customers",
            "k" * rng.randint(1, 1024),
            "é" * rng.randint(1, 1024),
            n,
        )
        for n in range(rng.randint(0, 200))
    )
    released = tuple(
        HoldRelease(
            f"hold-{n:010x}",
            rng.randint(1, 2**41),
            "r" * rng.randint(0, 1024),
            "spiffe://domicile/client/dpo",
        )
        for n in range(rng.randint(0, RELEASES_CARRIED))
    )
    return SubjectOrders(rng.randint(1, 2**40), erasures, holds, released)


def gather(pages: list[cpb.WatchSubjectOrdersResponse]) -> SubjectOrders | None:
    gatherer, whole = OrdersGatherer(), None
    for page in pages:
        assert whole is None, "a set ended before its last page"
        whole = gatherer.add(page)
    return whole


@pytest.mark.parametrize("run", range(5))
def test_pages_keep_their_bound_and_gather_back_to_the_same_set(run: int) -> None:
    seed = int(os.environ.get("ORDERS_SEED", random.randrange(2**32)))
    print(f"ORDERS_SEED={seed} replays this run")
    rng = random.Random(seed)
    orders = random_orders(rng)
    bound = rng.randint(8 * 1024, 256 * 1024)
    pages = orders_to_pages(orders, page_bytes_max=bound)
    assert all(p.ByteSize() <= bound for p in pages), seed
    assert [p.page for p in pages] == list(range(len(pages)))
    assert [p.last for p in pages] == [False] * (len(pages) - 1) + [True]
    assert gather(pages) == orders


def test_an_empty_set_is_one_empty_last_page() -> None:
    [page] = orders_to_pages(SubjectOrders(7))
    assert (page.revision, page.page, page.last, len(page.erasures), len(page.holds)) == (7, 0, True, 0, 0)
    assert gather([page]) == SubjectOrders(7)


def test_a_page_out_of_order_or_of_another_revision_is_refused() -> None:
    rng = random.Random(11)
    orders = random_orders(rng)
    pages = orders_to_pages(orders, page_bytes_max=8 * 1024)
    assert len(pages) > 2
    with pytest.raises(InvalidArgument, match="arrived where page 1"):
        gather([pages[0], pages[2]])
    other = orders_to_pages(
        SubjectOrders(orders.revision + 1, orders.erasures, orders.holds), page_bytes_max=8 * 1024
    )
    with pytest.raises(InvalidArgument, match=f"revision {orders.revision + 1}"):
        gather([pages[0], other[1]])
    # A new set starts over at its first page, whatever came before.
    assert gather([pages[0], *other]) == SubjectOrders(orders.revision + 1, orders.erasures, orders.holds)
