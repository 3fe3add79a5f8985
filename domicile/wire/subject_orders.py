"""The erasure orders, the legal holds in force and the latest hold releases on the wire: a set
split into pages of bounded size (CoordinatorService.WatchSubjectOrders) and gathered back whole
on the node (which also keeps the set it acts on as these pages, node/lifecycle/orders_store.py)."""

from __future__ import annotations

from domicile.errors import InvalidArgument
from domicile.subjects import ErasureOrder, HoldRelease, LegalHold, SubjectOrders
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.subjects import (
    erasure_from_pb,
    erasure_to_pb,
    hold_from_pb,
    hold_to_pb,
    release_from_pb,
    release_to_pb,
)

# Far below the 4 MiB a gRPC client takes by default, whatever the number of orders and holds:
# no page is larger (an order or a hold is at most a few KiB).
ORDERS_PAGE_BYTES_MAX = 1024 * 1024


# The revision, page number and last flag of a page: three tagged varints at most.
PAGE_HEADER_BYTES_MAX = 3 * 11


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def orders_to_pages(
    orders: SubjectOrders, page_bytes_max: int = ORDERS_PAGE_BYTES_MAX
) -> list[cpb.WatchSubjectOrdersResponse]:
    """The set as pages of at most `page_bytes_max` each (an item larger than that alone in its
    page); an empty set is one empty page."""
    pages = [cpb.WatchSubjectOrdersResponse(revision=orders.revision, page=0)]
    size = PAGE_HEADER_BYTES_MAX

    def room(item_bytes: int) -> cpb.WatchSubjectOrdersResponse:
        nonlocal size
        # An item costs its bytes, its field tag (1 byte) and its length (a varint).
        cost = item_bytes + 1 + _varint_bytes(item_bytes)
        if size > PAGE_HEADER_BYTES_MAX and size + cost > page_bytes_max:
            pages.append(cpb.WatchSubjectOrdersResponse(revision=orders.revision, page=len(pages)))
            size = PAGE_HEADER_BYTES_MAX
        size += cost
        return pages[-1]

    for erasure in orders.erasures:
        order = erasure_to_pb(erasure)
        room(order.ByteSize()).erasures.append(order)
    for hold in orders.holds:
        held = hold_to_pb(hold)
        room(held.ByteSize()).holds.append(held)
    for release in orders.released:
        released = release_to_pb(release)
        room(released.ByteSize()).released_holds.append(released)
    pages[-1].last = True
    return pages


class OrdersGatherer:
    """Gathers the pages of one set, in order; `add` returns the set at its last page."""

    def __init__(self) -> None:
        self._revision = 0
        self._next_page = 0
        self._erasures: list[ErasureOrder] = []
        self._holds: list[LegalHold] = []
        self._released: list[HoldRelease] = []

    def add(self, page: cpb.WatchSubjectOrdersResponse) -> SubjectOrders | None:
        if page.page == 0:
            self._revision, self._next_page = page.revision, 0
            self._erasures, self._holds, self._released = [], [], []
        if page.page != self._next_page or page.revision != self._revision:
            raise InvalidArgument(
                f"subject orders page {page.page} of revision {page.revision} arrived where page "
                f"{self._next_page} of revision {self._revision} was due; pages of a set arrive in order"
            )
        self._next_page += 1
        self._erasures.extend(erasure_from_pb(e) for e in page.erasures)
        self._holds.extend(hold_from_pb(h) for h in page.holds)
        self._released.extend(release_from_pb(r) for r in page.released_holds)
        if not page.last:
            return None
        orders = SubjectOrders(
            self._revision, tuple(self._erasures), tuple(self._holds), tuple(self._released)
        )
        self._erasures, self._holds, self._released, self._next_page = [], [], [], 0
        return orders
