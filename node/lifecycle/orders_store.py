"""The erasure orders and legal holds a node acts on, kept in its store across restarts, so that
holds keep protecting records and open erasures keep running while the coordinator is away.

A set at the limits (5,000 orders, 1,000 holds) is larger than one meta value may be, so it is
kept as its pages, each a meta value, in one of two slots: a new set is written to the slot not
in use, then the header that names slot and page count is switched. Each write is durable before
the next starts, so a crash leaves the header naming the old, complete set.
"""

from __future__ import annotations

import logging

from domicile.errors import DomicileError
from domicile.subjects import SubjectOrders
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.subject_orders import OrdersGatherer, orders_to_pages
from node.engine.base import StorageEngine

log = logging.getLogger("domicile.subject_orders")

ORDERS_META = "subject_orders"
SLOTS = ("a", "b")


def _page_name(slot: str, page: int) -> str:
    return f"{ORDERS_META}.{slot}.{page}"


def _header(engine: StorageEngine) -> tuple[str, int] | None:
    raw = engine.get_meta(ORDERS_META)
    if not raw:
        return None
    slot, count = raw.decode().split()
    return slot, int(count)


def save_orders(engine: StorageEngine, orders: SubjectOrders) -> None:
    """Writes the set to the free slot, then points the header at it. Blocks (store writes)."""
    header = _header(engine)
    slot = SLOTS[1] if header is not None and header[0] == SLOTS[0] else SLOTS[0]
    pages = orders_to_pages(orders)
    for page in pages:
        engine.put_meta(_page_name(slot, page.page), page.SerializeToString())
    engine.put_meta(ORDERS_META, f"{slot} {len(pages)}".encode())


def load_orders(engine: StorageEngine) -> SubjectOrders | None:
    """The set last saved, or None when none was (or it cannot be read: the coordinator sends
    the set again at the next connection). Blocks (store reads)."""
    try:
        header = _header(engine)
        if header is None:
            return None
        slot, count = header
        gatherer = OrdersGatherer()
        orders = None
        for n in range(count):
            raw = engine.get_meta(_page_name(slot, n))
            if raw is None:
                raise ValueError(f"page {n} of {count} is missing")
            orders = gatherer.add(cpb.WatchSubjectOrdersResponse.FromString(raw))
        if orders is None:
            raise ValueError(f"its {count} pages do not end a set")
        return orders
    except (DomicileError, ValueError) as exc:
        log.error(
            "the stored erasure orders and holds cannot be read (%s); waiting for the coordinator's", exc
        )
        return None
