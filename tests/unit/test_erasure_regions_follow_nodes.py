"""The open erasures' regions follow the nodes: a region that loses its last node (removed
with `domicile nodes remove`) is no longer waited for."""

from __future__ import annotations

import itertools
from pathlib import Path

from coordinator.config import CoordinatorLimits
from coordinator.registry import Registry
from coordinator.store import CoordinatorStore
from coordinator.subject_desk import SubjectDesk
from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.subjects import RegionReceipt, RequestStatus

CLUSTER = ClusterSpec(
    regions=(
        RegionSpec("us-east-1", "US", "US"),
        RegionSpec("eu-west-1", "IE", "EU"),
    ),
    namespaces=(NamespaceSpec("trades", is_global=True, retention_class="transaction_data"),),
)
START_MS = 1_750_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Coord:
    """Store, registry and desk on one data directory, wired as coordinator/daemon.py wires them."""

    def __init__(self, data_dir: Path, cluster: ClusterSpec = CLUSTER) -> None:
        self.clock = Clock()
        counter = itertools.count(1)
        self.store = CoordinatorStore(data_dir)
        self.registry = Registry(
            cluster,
            self.store,
            heartbeat_interval_ms=1000,
            missed_heartbeats_max=3,
            limits=CoordinatorLimits(),
            clock=self.clock,
            wall_clock=lambda: START_MS / 1000,
            publish=lambda t: None,
            on_register=lambda region: self.desk.reconcile(),
            on_remove=lambda region: self.desk.reconcile(),
        )
        self.desk = SubjectDesk(
            cluster,
            self.store,
            self.registry,
            limits=CoordinatorLimits(),
            now_ms=lambda: START_MS,
            random_hex=lambda: f"{next(counter):010x}",
        )
        self.desk.reconcile()

    def close(self) -> None:
        self.registry.close()
        self.store.close()


def receipt(region: str) -> RegionReceipt:
    return RegionReceipt(region, f"{region}-a", START_MS, START_MS + 5, (("trades", 1),), (), 1, 7)


def test_removing_the_last_node_of_a_region_stops_open_erasures_waiting_for_it(tmp_path: Path) -> None:
    """Regression: a request opened while the region had a node waited for it for good once its
    last node was removed (nothing left could report; the request stayed open and overdue)."""
    c = Coord(tmp_path / "data")
    try:
        c.registry.register("us-east-1-a", "us-east-1", "10.0.0.1:7401", "")
        c.registry.register("eu-west-1-a", "eu-west-1", "10.0.0.2:7401", "")
        request = c.desk.erase("cust-1", "Art. 17 request")
        assert request.regions_pending == ("us-east-1", "eu-west-1")
        c.desk.report_erasure(request.request_id, receipt("eu-west-1"))

        # us-east-1's only node dies and is decommissioned (domicile nodes remove).
        c.clock.now += 10
        assert c.registry.check_health() == ["eu-west-1-a", "us-east-1-a"]
        c.registry.heartbeat("eu-west-1-a")
        c.registry.remove("us-east-1-a")
        assert "us-east-1" not in c.registry.regions_with_nodes()

        # A new erasure leaves us-east-1 out, and the one opened before no longer waits for it.
        later = c.desk.erase("cust-2", "Art. 17 request")
        assert later.regions_pending == ("eu-west-1",)
        done = c.desk.get(request.request_id)
        assert done.regions_pending == () and done.status is RequestStatus.COMPLETED
        # Negative control: a region that still has a node (down, not removed) is waited for.
        c.registry.register("us-east-1-b", "us-east-1", "10.0.0.3:7401", "")
        third = c.desk.erase("cust-3", "Art. 17 request")
        assert third.regions_pending == ("us-east-1", "eu-west-1")
        c.clock.now += 10
        c.registry.heartbeat("eu-west-1-a")
        assert c.registry.check_health() == ["us-east-1-b"]
        c.desk.reconcile()
        assert c.desk.get(third.request_id).regions_pending == ("us-east-1", "eu-west-1")
    finally:
        c.close()


def test_a_registered_node_of_a_region_the_config_dropped_is_still_ordered_to_erase(tmp_path: Path) -> None:
    """Regression: a region taken out of the cluster config while its node stayed registered
    got no erasure orders, although that node still held what it had stored; its receipt was
    refused as from an unknown region."""
    c = Coord(tmp_path / "data")
    try:
        c.registry.register("us-east-1-a", "us-east-1", "10.0.0.1:7401", "")
        c.registry.register("eu-west-1-a", "eu-west-1", "10.0.0.2:7401", "")
    finally:
        c.close()
    only_us = ClusterSpec(regions=CLUSTER.regions[:1], namespaces=CLUSTER.namespaces)
    c = Coord(tmp_path / "data", only_us)
    try:
        request = c.desk.erase("cust-1", "Art. 17 request")
        assert request.regions_pending == ("us-east-1", "eu-west-1")
        c.desk.report_erasure(request.request_id, receipt("eu-west-1"))
        c.desk.report_erasure(request.request_id, receipt("us-east-1"))
        assert c.desk.get(request.request_id).status is RequestStatus.COMPLETED
        # Once that node is down and removed, nothing is left there to order.
        c.clock.now += 10
        c.registry.heartbeat("us-east-1-a")
        assert c.registry.check_health() == ["eu-west-1-a"]
        c.registry.remove("eu-west-1-a")
        assert c.desk.erase("cust-2", "Art. 17 request").regions_pending == ("us-east-1",)
    finally:
        c.close()
