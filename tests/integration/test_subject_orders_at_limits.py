"""Erasure orders and legal holds at the documented limits (5,000 open requests, 1,000 holds in
force, each as large as its limits allow) with a real coordinator and real nodes.

They travel on WatchSubjectOrders, in pages, not in the topology: the topology message stays
small whatever their number, every page stays far below the 4 MiB a gRPC client receives by
default, and every node adopts every change, including one made while it was stopped. The
requests and holds are made in one batch of the coordinator's desk, so the test takes seconds.
"""

from __future__ import annotations

from pathlib import Path

from domicile.subjects import REASON_CHARS_MAX, SUBJECT_ID_BYTES_MAX, HoldScope, RegionReceipt, SubjectOrders
from domicile.wire.subject_orders import ORDERS_PAGE_BYTES_MAX, orders_to_pages
from domicile.wire.topology import topology_to_pb
from node.lifecycle.orders_store import load_orders
from tests.support.cluster import LocalCluster, eventually

# What a gRPC client receives by default (grpc.max_receive_message_length): the message the
# topology grew past when it carried every order and hold.
GRPC_RECEIVE_BYTES_DEFAULT = 4 * 1024 * 1024
RUNNING = ["eu-west-1", "eu-central-1"]
# Registered but never started: every erasure waits for it, so the orders stay in force while
# the running nodes, whose regions have reported, have nothing to carry out.
SILENT = "us-east-1"
KEY_BYTES_MAX = 1024


def big_subject(n: int) -> str:
    return f"subject-{n:05d}-".ljust(SUBJECT_ID_BYTES_MAX, "s")


async def test_at_the_limits_the_topology_stays_small_and_every_node_adopts_every_change(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, [*RUNNING, SILENT])
    try:
        await cluster.start_coordinator()
        coordinator = cluster.coordinator
        assert coordinator is not None
        limits = coordinator.config.limits
        registry, desk = coordinator.registry, coordinator.desk
        for region in cluster.regions:
            registry.register(region, region, "127.0.0.1:9", "")
        # Two-byte characters: a reason of the most characters is twice as many bytes.
        reason = "é" * REASON_CHARS_MAX
        with desk.batch():
            requests = [
                desk.erase(big_subject(n), "bulk", "DE") for n in range(limits.open_subject_requests_max)
            ]
            for request in requests:
                for region in RUNNING:
                    desk.report_erasure(request.request_id, RegionReceipt(region, region, 1, 2))
            holds = [
                desk.place_hold(
                    HoldScope.KEY,
                    namespace="customers_eu",
                    key=f"{n:05d}".ljust(KEY_BYTES_MAX, "k"),
                    reason=reason,
                )
                for n in range(limits.legal_holds_max)
            ]
        orders = registry.orders()
        assert len(orders.erasures) == limits.open_subject_requests_max
        assert len(orders.holds) == limits.legal_holds_max
        assert all(e.regions_pending == (SILENT,) for e in orders.erasures)

        # Negative control: carried whole, as the topology used to, the set alone is more than a
        # node receives; paged, no page comes near it, and the topology does not grow.
        [whole] = orders_to_pages(orders, page_bytes_max=2**62)
        assert whole.ByteSize() > GRPC_RECEIVE_BYTES_DEFAULT
        pages = orders_to_pages(orders)
        assert len(pages) > 1
        assert max(p.ByteSize() for p in pages) <= ORDERS_PAGE_BYTES_MAX < GRPC_RECEIVE_BYTES_DEFAULT
        topology = topology_to_pb(registry.topology())
        assert not topology.erasures and not topology.holds
        assert topology.ByteSize() * 64 < GRPC_RECEIVE_BYTES_DEFAULT

        for region in RUNNING:
            await cluster.start_node(region)

        async def adopted(expected: SubjectOrders, regions: list[str]) -> bool:
            return all(cluster.nodes[r].view.orders == expected for r in regions)

        await eventually(
            lambda: adopted(registry.orders(), RUNNING), timeout_s=60, what="the set at the limits"
        )
        for region in RUNNING:
            node = cluster.nodes[region]
            assert node.view.topology.holds == orders.holds
            # Nothing to carry out: their regions have reported.
            assert not node.eraser._running

        # Every change reaches every node: a hold released, a region reporting.
        desk.release_hold(holds[0].hold_id, "closed")
        await eventually(lambda: adopted(registry.orders(), RUNNING), timeout_s=30, what="a release")
        done = desk.report_erasure(requests[0].request_id, RegionReceipt(SILENT, SILENT, 1, 2))
        await eventually(lambda: adopted(registry.orders(), RUNNING), timeout_s=30, what="a completion")
        assert done.request_id not in {e.request_id for e in cluster.nodes[RUNNING[0]].view.orders.erasures}

        # A node that was stopped through a change adopts it when it comes back, and keeps the
        # set it acts on across the restart.
        await cluster.stop_node(RUNNING[1])
        desk.release_hold(holds[1].hold_id, "closed")
        restarted = await cluster.start_node(RUNNING[1])
        # Before it hears from the coordinator it acts on the set it stored.
        assert load_orders(restarted.engine) is not None
        await eventually(
            lambda: adopted(registry.orders(), RUNNING), timeout_s=60, what="a change made while down"
        )
        assert holds[1].hold_id not in {h.hold_id for h in restarted.view.topology.holds}
    finally:
        await cluster.stop()
